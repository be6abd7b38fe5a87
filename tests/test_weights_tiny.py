"""`download-weights --tiny` runs the registered tiny builders and gives their folders manifests.

The real builders land with each model; here a fake builder module (written to tmp_path) is registered."""

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from avtool.cli import app
from avtool.weights import tiny
from avtool.weights.loading import load_state_dict, read_safetensors_metadata

FAKE_BUILDER = textwrap.dedent('''
    from pathlib import Path

    import torch
    from safetensors.torch import save_file


    def build(weights_dir):
        generator = torch.Generator().manual_seed(0)
        folder = Path(weights_dir) / "musicinfuser"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"blocks.0.attn.qkv_x.lora_A": torch.randn(4, 8, generator=generator)},
                  folder / "musicinfuser.safetensors", metadata={"kwargs": "{}"})
        wav2vec2 = Path(weights_dir) / "wav2vec2-base-960h"
        wav2vec2.mkdir(exist_ok=True)
        (wav2vec2 / "config.json").write_text('{"hidden_size": 8}')
''')


@pytest.fixture
def fake_builder(tmp_path, monkeypatch):
    (tmp_path / "fake_tiny_builder.py").write_text(FAKE_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tiny, "BUILDERS", {"musicinfuser": "fake_tiny_builder:build"})


def invoke(*args, env=None):
    return CliRunner().invoke(app, ["download-weights", *map(str, args)], env=env)


def test_tiny_build_has_manifests_and_is_deterministic(fake_builder, tmp_path):
    manifests = []
    for name in ("a", "b"):
        result = invoke("--tiny", "--dir", tmp_path / name, "musicinfuser", "--json")
        assert result.exit_code == 0, result.output
        fetched = json.loads(result.stdout)["fetched"]
        assert {(e["folder"], e["file"], e["from"]) for e in fetched} == {
            ("musicinfuser", "musicinfuser.safetensors", "tiny"), ("wav2vec2-base-960h", "config.json", "tiny")}
        manifests.append([json.loads((tmp_path / name / f / "avtool-manifest.json").read_text())["files"]
                          for f in ("musicinfuser", "wav2vec2-base-960h")])
    assert manifests[0] == manifests[1]
    adapter = tmp_path / "a" / "musicinfuser" / "musicinfuser.safetensors"
    expected = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_state_dict(adapter)["blocks.0.attn.qkv_x.lora_A"], expected)
    assert read_safetensors_metadata(adapter) == {"kwargs": "{}"}


def test_verify_works_on_tiny_builds(fake_builder, tmp_path):
    assert invoke("--tiny", "--dir", tmp_path).exit_code == 0  # no model named: every registered builder
    assert invoke("--verify", "--dir", tmp_path).exit_code == 0
    (tmp_path / "wav2vec2-base-960h" / "config.json").write_text('{"hidden_size": 9}')
    result = invoke("--verify", "--dir", tmp_path)
    assert result.exit_code == 3
    assert "config.json" in result.stderr and "sha256" in result.stderr


def test_tiny_defaults_to_the_weights_dir_tiny_subfolder(fake_builder, tmp_path):
    result = invoke("--tiny", "musicinfuser", env={"AVTOOL_WEIGHTS": str(tmp_path / "w")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "w" / "tiny" / "musicinfuser" / "avtool-manifest.json").is_file()


def test_tiny_dry_run_builds_nothing(fake_builder, tmp_path):
    result = invoke("--tiny", "--dry-run", "--dir", tmp_path / "t", "--json")
    assert result.exit_code == 0, result.output
    assert [e["action"] for e in json.loads(result.stdout)["planned"]] == ["build tiny musicinfuser"]
    assert not (tmp_path / "t").exists()


def test_tiny_for_a_model_without_builder_is_bad_input(fake_builder, tmp_path):
    result = invoke("--tiny", "--dir", tmp_path, "vidmuse")
    assert result.exit_code == 2
    assert "--tiny vidmuse: no tiny builder registered" in result.stderr
    assert not tmp_path.joinpath("vidmuse").exists()
