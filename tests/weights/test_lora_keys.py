"""The LoRA file's key spelling: every form PEFT writes is merged, and the log says which form
was found, since LiveAvatar's own loader silently drops all but `lora_A.default.weight`."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.weights.dit import load_dit
from pipeline.weights.errors import CorruptFileError
from pipeline.weights.lora import read_lora
from pipeline.weights.spec_module import module_from_shapes
from pipeline.weights.specs import dit_shapes

from .tiny_release import TINY, merged_weight

LOGGER = "pipeline.weights.lora"


def respell(release, rename) -> None:
    tensors = load_file(release.paths.lora)
    save_file({rename(k): v for k, v in tensors.items()}, release.paths.lora)


def lora_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "INFO"]


def test_the_release_form_is_logged_as_what_liveavatar_loads(pristine_release, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    adapter = read_lora(pristine_release.paths.lora)
    assert adapter.adapter_name == "default" and adapter.prefixed
    [message] = lora_messages(caplog)
    assert "base_model.model.<module>.lora_A.default.weight" in message
    assert "as LiveAvatar saves them" in message
    assert "leave them out" not in message


@pytest.mark.parametrize(
    ("rename", "form", "note"),
    [
        (
            lambda k: k.replace(".default.", "."),  # PEFT's own adapter files
            "form base_model.model.<module>.lora_A.weight",
            "no adapter name",
        ),
        (
            lambda k: k.removeprefix("base_model.model.").replace(".default.", "."),
            "form <module>.lora_A.weight",
            "no adapter name",
        ),
        (
            lambda k: k.replace(".default.", ".custom."),
            "form base_model.model.<module>.lora_A.custom.weight",
            "adapter name 'custom'",
        ),
    ],
)
def test_a_form_the_reference_would_ignore_is_merged_and_logged(
    release, caplog, rename, form, note
):
    respell(release, rename)
    caplog.set_level(logging.INFO, logger=LOGGER)
    module = module_from_shapes(dit_shapes(TINY.dit), torch.bfloat16, "meta")
    report = load_dit(release.paths.base, module, "cpu", lora=release.paths.lora)

    # merged all the same
    assert report.lora is not None and report.lora.tensors > 0
    name = "blocks.0.self_attn.q"
    assert torch.equal(
        module.get_parameter(f"{name}.weight"), merged_weight(release, name, torch.bfloat16)
    )
    # and the log says the reference would not have merged it
    [message] = lora_messages(caplog)
    assert form in message and note in message
    assert "would leave them out" in message


def test_keys_without_the_prefix_but_with_the_adapter_name_are_what_liveavatar_loads(
    release, caplog
):
    respell(release, lambda k: k.removeprefix("base_model.model."))
    caplog.set_level(logging.INFO, logger=LOGGER)
    adapter = read_lora(release.paths.lora)
    assert adapter.adapter_name == "default" and not adapter.prefixed
    [message] = lora_messages(caplog)
    assert "form <module>.lora_A.default.weight" in message
    assert "as LiveAvatar saves them" in message


def test_a_file_mixing_prefixed_and_bare_keys_is_refused(release):
    # LiveAvatar prefixes all keys or none, by the first one: half of such a file goes missing
    tensors = load_file(release.paths.lora)
    key = next(k for k in tensors if ".blocks.1." in k)
    tensors[key.removeprefix("base_model.model.")] = tensors.pop(key)
    save_file(tensors, release.paths.lora)
    with pytest.raises(CorruptFileError, match="mixes keys with and without"):
        read_lora(release.paths.lora)
