"""Job lifecycle: claim a lease, drive the generator, encode segments, checkpoint, stitch, upload."""
