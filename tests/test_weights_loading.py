"""The one safe checkpoint loader: safetensors first, pickles only with weights_only=True."""

import os

import pytest
import torch
from safetensors.torch import save_file

from avtool.errors import EXIT_WEIGHTS, WeightsError
from avtool.weights.loading import load_checkpoint, load_state_dict, read_safetensors_metadata


class CodePayload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_code_payload_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.bin"
    torch.save({"weight": torch.zeros(2), "payload": CodePayload(marker)}, path)
    with pytest.raises(WeightsError) as error:
        load_state_dict(path)
    assert error.value.exit_code == EXIT_WEIGHTS == 3
    assert str(path) in error.value.message and "needs arbitrary pickled code" in error.value.message
    assert "posix.system" in error.value.message
    assert not marker.exists()


def test_safetensors_round_trip_and_metadata(tmp_path):
    tensors = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    path = tmp_path / "adapter.safetensors"
    save_file(tensors, path, metadata={"kwargs": '{"qkv_proj_lora_rank": 4}'})
    loaded = load_state_dict(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    assert read_safetensors_metadata(path) == {"kwargs": '{"qkv_proj_lora_rank": 4}'}


def test_nested_pickle_state_dict_by_key(tmp_path):
    path = tmp_path / "state_dict.bin"
    best = {"linears.0.weight": torch.randn(3, 2)}
    torch.save({"best_state": best, "xp.cfg": "lm:\n  dim: 8\n", "version": "1.2.0a1", "exported": True}, path)
    assert torch.equal(load_state_dict(path, key="best_state")["linears.0.weight"], best["linears.0.weight"])
    assert load_checkpoint(path)["xp.cfg"].startswith("lm:")
    with pytest.raises(WeightsError, match="not a flat state dict"):
        load_state_dict(path)
    with pytest.raises(WeightsError, match="no 'model' entry"):
        load_state_dict(path, key="model")


def test_legacy_pickle_format_loads(tmp_path):
    path = tmp_path / "learned_embeds.pth"
    torch.save({"fc1.weight": torch.ones(2, 2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(path)["fc1.weight"], torch.ones(2, 2))


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_truncated_file_is_a_weights_error(tmp_path, name):
    path = tmp_path / name
    full = tmp_path / f"full-{name}"
    if name.endswith(".safetensors"):
        save_file({"w": torch.randn(64, 64)}, full)
    else:
        torch.save({"w": torch.randn(64, 64)}, full)
    path.write_bytes(full.read_bytes()[:200])
    with pytest.raises(WeightsError, match="unreadable") as error:
        load_state_dict(path)
    assert str(path) in error.value.message


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(WeightsError, match="missing checkpoint"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown checkpoint format"):
        load_state_dict(tmp_path / "weights.h5")
