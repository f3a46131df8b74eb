"""vf3d.atomic: a file appears whole under its final name or not at all, and a failed write leaves
the old file as it was with no partial file behind."""

from __future__ import annotations

import json
import os

import pytest

from vf3d import atomic


def _names(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_content_lands_whole_and_no_partial_is_left(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_json_atomic(target, {"psnr": 21.5, "name": "ü"}, ensure_ascii=False)
    assert json.loads(target.read_text(encoding="utf-8")) == {"psnr": 21.5, "name": "ü"}
    assert target.read_text(encoding="utf-8").endswith("}\n")
    atomic.write_bytes_atomic(tmp_path / "blob.bin", b"\x00\x01" * 1000)
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01" * 1000
    atomic.write_text_atomic(tmp_path / "notes.md", "# title\n")
    assert (tmp_path / "notes.md").read_text(encoding="utf-8") == "# title\n"
    assert _names(tmp_path) == ["blob.bin", "notes.md", "report.json"]


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    atomic.write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["summary.json"]


def test_nothing_is_visible_under_the_final_name_until_the_block_ends(tmp_path):
    target = tmp_path / "shard.parquet"
    with atomic.atomic_write(target) as file:
        file.write(b"first half")
        file.flush()
        assert not target.exists()
        (partial,) = tmp_path.iterdir()
        assert partial.name.startswith(".shard.parquet.") and partial.name.endswith(atomic.PARTIAL_SUFFIX)
    assert target.read_bytes() == b"first half"


@pytest.mark.parametrize("fsync", [False, True])
def test_an_exception_leaves_the_old_file_untouched_and_no_partial(tmp_path, fsync):
    target = tmp_path / "metrics.json"
    target.write_text("the good old content")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_write(target, "w", fsync=fsync) as file:
            file.write("half of the new con")
            raise RuntimeError("disk full")
    assert target.read_text() == "the good old content"
    assert _names(tmp_path) == ["metrics.json"]


def test_an_exception_before_anything_was_written_leaves_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(tmp_path / "model.safetensors"):
            raise KeyboardInterrupt  # a BaseException: cleanup must not wait for an Exception
    assert _names(tmp_path) == []


def test_json_that_cannot_be_encoded_fails_before_touching_the_disk(tmp_path):
    with pytest.raises(TypeError):
        atomic.write_json_atomic(tmp_path / "bad.json", {"value": object()})
    assert _names(tmp_path) == []


def test_fsync_flushes_the_file_and_the_directory(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(atomic, "fsync_path", lambda path: flushed.append(os.fspath(path)))
    target = tmp_path / "orbits-0123456789abcdef.parquet"
    atomic.write_bytes_atomic(target, b"PAR1", fsync=True)
    assert target.read_bytes() == b"PAR1"
    # The partial file before the rename (its data), then the directory after it (the new name).
    assert len(flushed) == 2
    assert os.path.basename(flushed[0]).endswith(atomic.PARTIAL_SUFFIX)
    assert flushed[1] == os.fspath(tmp_path)
    flushed.clear()
    atomic.write_bytes_atomic(target, b"PAR2")
    assert flushed == []


def test_fsync_really_runs(tmp_path):
    target = atomic.write_text_atomic(tmp_path / "a.txt", "durable", fsync=True)
    assert target.read_text() == "durable"
    atomic.fsync_path(tmp_path)  # a directory can be fsynced on the platforms vf3d runs on


def test_atomic_path_serves_writers_that_need_a_file_name(tmp_path):
    target = tmp_path / "turntable.mp4"
    suffix = f"{atomic.PARTIAL_SUFFIX}.mp4"
    with atomic.atomic_path(target, partial_suffix=suffix) as partial:
        assert partial.parent == tmp_path and partial.name.endswith(".partial.mp4")  # ffmpeg picks the container by suffix
        partial.write_bytes(b"video")
    assert target.read_bytes() == b"video"


def test_two_writers_of_one_target_get_different_partial_files(tmp_path):
    assert atomic.partial_path(tmp_path / "x.parquet") != atomic.partial_path(tmp_path / "x.parquet")


def test_only_whole_file_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_write(tmp_path / "log.jsonl", "a"):
            pass


def test_remove_partials_deletes_only_partial_files(tmp_path):
    (tmp_path / "orbits-0123456789abcdef.parquet").write_bytes(b"PAR1")
    (tmp_path / ".orbits-0123456789abcdef.parquet.0badc0de.partial").write_bytes(b"PA")
    (tmp_path / ".vf3d-lease.json.token.0badc0de.tmp").write_text("{}")  # not ours to delete
    assert atomic.remove_partials(tmp_path) == 1
    assert atomic.remove_partials(tmp_path / "missing") == 0
    assert _names(tmp_path) == [".vf3d-lease.json.token.0badc0de.tmp", "orbits-0123456789abcdef.parquet"]


def test_a_failed_model_save_keeps_the_old_model_and_leaves_no_new_directory(tmp_path, monkeypatch):
    from dataclasses import dataclass

    import torch

    from vf3d.models import pretrained

    @dataclass
    class TinyConfig:
        width: int = 2

    class Tiny(pretrained.PretrainedModel):
        model_type = "tiny"
        config_class = TinyConfig

        def __init__(self, config: TinyConfig) -> None:
            super().__init__(config)
            self.weight = torch.nn.Parameter(torch.ones(config.width))

    saved = Tiny(TinyConfig()).save_pretrained(tmp_path / "model")
    assert sorted(path.name for path in saved.iterdir()) == [pretrained.CONFIG_NAME, pretrained.WEIGHTS_NAME]
    before = {path.name: path.read_bytes() for path in saved.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(pretrained, "save_file", full_disk)
    with pytest.raises(OSError, match="no space"):
        Tiny(TinyConfig(width=3)).save_pretrained(saved)
    assert {path.name: path.read_bytes() for path in saved.iterdir()} == before  # the old pair, and no partial files
    with pytest.raises(OSError, match="no space"):
        Tiny(TinyConfig()).save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
