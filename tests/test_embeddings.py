"""Window embeddings: embed a folder of known sounds, reload, search; damaged and escaping indexes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_factory import tone, write_chirp, write_noise
from safetensors.numpy import save as save_tensors

from asca_core.embeddings import INDEX_FILE, EmbeddingIndex, embed_files, model_digest
from asca_core.errors import AscaError

SR = 16000


def _write(path: Path, wave: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), SR)
    return path


def _tone(freq: float, seconds: float, phase: float, seed: int) -> np.ndarray:
    """A sine with a starting phase and a little noise: the same sound, never the same samples."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return 0.5 * np.sin(2 * np.pi * freq * t + phase) + 0.005 * rng.standard_normal(t.size)


@pytest.fixture(scope="module")
def clf(pico_run):
    from asca_core.inference import Classifier

    return Classifier.from_run(pico_run)  # 1 s windows, half a window apart


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Recordings of known content: two of one tone, one of another, noise, a sweep, a short clip."""
    root = tmp_path_factory.mktemp("embed") / "recs"
    _write(root / "tone_a.wav", _tone(1000.0, 4.0, 0.0, 1))
    _write(root / "tone_b.wav", _tone(1000.0, 3.0, 1.3, 2))
    _write(root / "high.wav", _tone(3000.0, 3.0, 0.4, 3))
    root.mkdir(exist_ok=True)
    write_noise(root / "noise.wav", seconds=3.0, seed=4)
    (root / "sub").mkdir()
    write_chirp(root / "sub" / "sweep.wav", seconds=3.0)
    _write(root / "short.wav", tone(500.0, 0.5, SR))
    return root


GOOD = ["high.wav", "noise.wav", "short.wav", "sub/sweep.wav", "tone_a.wav", "tone_b.wav"]


@pytest.fixture(scope="module")
def index_dir(clf, recordings, tmp_path_factory) -> Path:
    broken = recordings.parent / "broken" / "broken.wav"
    broken.parent.mkdir()
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    shutil.copy(broken, recordings / "broken.wav")
    out = tmp_path_factory.mktemp("index") / "emb"
    files = sorted(recordings.rglob("*.wav"))
    assert embed_files(clf, files, out, root=recordings) == out
    (recordings / "broken.wav").unlink()
    return out


def test_embed_writes_one_vector_file_per_recording_and_an_index(clf, recordings, index_dir):
    record = json.loads((index_dir / INDEX_FILE).read_text())
    assert record["format"] == "asca-embeddings/1" and record["root"] == str(recordings)
    assert (record["window"], record["hop"]) == (1.0, 0.5)
    assert record["model_sha256"] == model_digest(clf.model)
    assert [e["file"] for e in record["files"]] == GOOD
    assert [e["file"] for e in record["errors"]] == ["broken.wav"] and "broken.wav" in record["errors"][0]["error"]
    for entry in record["files"]:
        assert (index_dir / entry["store"]).is_file() and entry["store"].startswith("vectors/")
    index = EmbeddingIndex.load(index_dir)
    assert [f.name for f in index.files] == GOOD and index.errors == record["errors"]
    assert len(index) == sum(e["windows"] for e in record["files"]) == index.embeddings.shape[0]
    assert index.dims == record["dims"] and index.embeddings.dtype == np.float32
    # each file's windows are the classifier's windows, embedded as window_outputs embeds them
    for f in index.files:
        stream, duration = clf.windows(recordings / f.name)
        starts, chunks = zip(*stream)
        rows = slice(f.first, f.first + f.count)
        assert f.count == len(starts) and f.duration == pytest.approx(duration)
        assert index.starts[rows] == pytest.approx(starts)
        expected = clf.window_outputs(np.stack(chunks)).embeddings
        np.testing.assert_allclose(index.embeddings[rows], expected, rtol=1e-4, atol=1e-5)
    # the 4 s tone: windows every 0.5 s; the 0.5 s clip: one window centred on it, clipped in hits
    tone_a = index.files[GOOD.index("tone_a.wav")]
    assert index.starts[tone_a.first : tone_a.first + tone_a.count].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    short = index.files[GOOD.index("short.wav")]
    assert short.count == 1 and index.starts[short.first] == pytest.approx(-0.25)
    hit = index.hit(short.first, 1.0)
    assert (hit.start, hit.end, hit.name) == (0.0, pytest.approx(0.5), "short.wav")


def test_nearest_windows_are_windows_of_the_same_sound(recordings, index_dir):
    index = EmbeddingIndex.load(index_dir)
    same = index.search((recordings / "tone_a.wav", 1.0), k=3)
    assert same[0].name == "tone_a.wav" and same[0].start == 1.0 and same[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in same] == sorted((h.score for h in same), reverse=True)
    # other recordings only: the five windows of the other 1 kHz tone come first
    tone_b = index.files[GOOD.index("tone_b.wav")]
    hits = index.search(("tone_a.wav", 1.0), k=tone_b.count, exclude_same_file=True)
    assert [h.name for h in hits] == ["tone_b.wav"] * tone_b.count
    assert hits[0].file == str(recordings / "tone_b.wav")
    others = index.search(("tone_a.wav", 1.0), k=len(index), exclude_same_file=True)
    assert len(others) == len(index) - index.files[GOOD.index("tone_a.wav")].count
    assert min(h.score for h in others if h.name == "tone_b.wav") > max(
        h.score for h in others if h.name not in ("tone_b.wav",)
    )
    # every window of the noise finds noise first among the other windows of the folder
    noise = index.files[GOOD.index("noise.wav")]
    for row in range(noise.first, noise.first + noise.count):
        top = index.search(index.embeddings[row], k=2)
        assert top[0].name == "noise.wav" and top[1].name == "noise.wav"
    # a vector query is the same as the window it came from
    vector = index.vector("tone_b.wav", 0.5)
    assert [h.start for h in index.search(vector, k=3)] == [h.start for h in index.search(("tone_b.wav", 0.5), k=3)]


def test_search_refuses_bad_queries_with_one_error(recordings, index_dir):
    index = EmbeddingIndex.load(index_dir)
    with pytest.raises(AscaError, match="not in the embeddings index"):
        index.search((recordings / "missing.wav", 0.0))
    with pytest.raises(AscaError, match="no window starting near 40"):
        index.search(("tone_a.wav", 40.0))
    with pytest.raises(AscaError, match="k must be >= 1"):
        index.search(("tone_a.wav", 0.0), k=0)
    with pytest.raises(AscaError, match="vector of"):
        index.search(np.zeros(3))
    with pytest.raises(AscaError, match="NaN"):
        index.search(np.full(index.dims, np.nan))
    assert index.row("tone_a.wav", 1.2) == index.row("tone_a.wav", 1.0)  # the nearest start


def test_embedding_again_keeps_finished_files_and_redoes_changed_ones(clf, recordings, tmp_path):
    folder = shutil.copytree(recordings, tmp_path / "recs")
    files = sorted(folder.rglob("*.wav"))
    out = embed_files(clf, files, tmp_path / "emb", root=folder)
    record = json.loads((out / INDEX_FILE).read_text())
    stores = {e["file"]: out / e["store"] for e in record["files"]}
    stamps = {name: path.stat().st_mtime_ns for name, path in stores.items()}
    os.utime(folder / "noise.wav", ns=(1, 1))  # changed: embedded again
    embed_files(clf, files, out, root=folder)
    again = {name: path.stat().st_mtime_ns for name, path in stores.items()}
    assert [n for n in again if again[n] != stamps[n]] == ["noise.wav"]
    # another window, model or root is another index: refused, nothing overwritten
    with pytest.raises(AscaError, match="another window"):
        embed_files(clf, files, out, root=folder, window=0.5)
    with pytest.raises(AscaError, match="another root"):
        embed_files(clf, [folder / "sub" / "sweep.wav"], out)  # root: the folder holding the files
    with pytest.raises(AscaError, match="not inside the index root"):
        embed_files(clf, [recordings / "tone_a.wav"], tmp_path / "emb2", root=folder)
    with pytest.raises(AscaError, match="no audio files"):
        embed_files(clf, [], tmp_path / "emb3")
    assert EmbeddingIndex.load(out).files[0].name == "high.wav"


# ---------------------------------------------------------------------- damaged index folders


@pytest.fixture
def copy(index_dir, tmp_path) -> Path:
    return shutil.copytree(index_dir, tmp_path / "emb")


def _edit(folder: Path, change) -> None:
    record = json.loads((folder / INDEX_FILE).read_text())
    change(record)
    (folder / INDEX_FILE).write_text(json.dumps(record))


def _first_store(folder: Path) -> Path:
    return folder / json.loads((folder / INDEX_FILE).read_text())["files"][0]["store"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(format="other/1"), "is not an embeddings index"),
        (lambda r: r.update(window=-1), "'window' must be a positive number"),
        (lambda r: r.update(hop="half"), "'hop' must be a positive number"),
        (lambda r: r.update(root="relative/folder"), "'root' must be an absolute folder path"),
        (lambda r: r.update(files={"a": 1}), "'files' must be a list"),
        (lambda r: r["files"].append(7), "files\\[6\\] must be an object"),
        (lambda r: r["files"][0].update(file="../outside.wav"), "without '..'"),
        (lambda r: r["files"][0].update(file="/etc/passwd"), "must be a path relative to the root"),
        (lambda r: r["files"][0].update(store="../../outside.safetensors"), "not one asca embed writes"),
        (lambda r: r["files"][0].update(store="vectors/0123456789abcdef.safetensors"), "is missing"),
        (lambda r: r["files"][0].update(duration=-3), "'duration' must be a non-negative number"),
        (lambda r: r["files"].append(dict(r["files"][0])), "lists a file twice"),
    ],
)
def test_a_tampered_index_json_is_one_error(copy, change, message):
    _edit(copy, change)
    with pytest.raises(AscaError, match=message) as info:
        EmbeddingIndex.load(copy)
    assert "\n" not in str(info.value)


def test_a_damaged_or_missing_index_json_is_one_error(copy, tmp_path):
    (copy / INDEX_FILE).write_text("{not json")
    with pytest.raises(AscaError, match="index.json is not valid JSON"):
        EmbeddingIndex.load(copy)
    (copy / INDEX_FILE).write_text("[]")
    with pytest.raises(AscaError, match="must hold a JSON object"):
        EmbeddingIndex.load(copy)
    (copy / INDEX_FILE).unlink()
    with pytest.raises(AscaError, match="has no index.json"):
        EmbeddingIndex.load(copy)
    with pytest.raises(AscaError, match="is not a folder of embeddings"):
        EmbeddingIndex.load(tmp_path / "nothing")


def test_a_damaged_or_missing_vector_file_is_one_error(copy):
    store = _first_store(copy)
    store.unlink()
    with pytest.raises(AscaError, match="is missing: run asca embed again"):
        EmbeddingIndex.load(copy)
    store.write_bytes(b"\x00" * 40)
    with pytest.raises(AscaError, match="not a readable safetensors file"):
        EmbeddingIndex.load(copy)
    store.write_bytes(save_tensors({"embeddings": np.zeros((3, 4), np.float32)}))
    with pytest.raises(AscaError, match=r"must hold embeddings \(N, D\) and starts \(N,\)"):
        EmbeddingIndex.load(copy)
    store.write_bytes(save_tensors({"embeddings": np.zeros((2, 4), np.float32), "starts": np.zeros(3)}))
    with pytest.raises(AscaError, match="must hold embeddings"):
        EmbeddingIndex.load(copy)
    store.write_bytes(save_tensors({"embeddings": np.zeros((2, 4), np.float32), "starts": np.zeros(2)}))
    with pytest.raises(AscaError, match=r"expected \(N, "):
        EmbeddingIndex.load(copy)
    width = json.loads((copy / INDEX_FILE).read_text())["dims"]
    store.write_bytes(save_tensors({"embeddings": np.full((2, width), np.nan, np.float32), "starts": np.zeros(2)}))
    with pytest.raises(AscaError, match="NaN or infinite"):
        EmbeddingIndex.load(copy)


# ------------------------------------------------------------------------ paths stay inside


def test_a_vector_file_linked_out_of_the_index_folder_is_refused(copy, tmp_path):
    store = _first_store(copy)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(store, outside)
    store.unlink()
    store.symlink_to(outside)
    with pytest.raises(AscaError, match="leads outside"):
        EmbeddingIndex.load(copy)
    # the whole vectors folder as a link out of the index folder
    elsewhere = shutil.copytree(copy / "vectors", tmp_path / "elsewhere")
    (elsewhere / store.name).unlink()
    shutil.copy(outside, elsewhere / store.name)
    shutil.rmtree(copy / "vectors")
    (copy / "vectors").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(AscaError, match="leads outside"):
        EmbeddingIndex.load(copy)


def test_a_recording_linked_out_of_the_root_is_refused(clf, recordings, copy, tmp_path):
    root = Path(json.loads((copy / INDEX_FILE).read_text())["root"])
    assert root == recordings
    # a listed name that is a link inside the root leading out of it
    link = recordings / "escape.wav"
    link.symlink_to(tmp_path / "secret.wav")
    try:
        _edit(copy, lambda r: r["files"][0].update(file="escape.wav"))
        with pytest.raises(AscaError, match="leads outside the index root"):
            EmbeddingIndex.load(copy)
        # embedding such a link is refused before anything is read
        write_noise(tmp_path / "secret.wav", seconds=1.0)
        with pytest.raises(AscaError, match="is a link leading outside the index root"):
            embed_files(clf, [link], tmp_path / "emb-link", root=recordings)
        assert not (tmp_path / "emb-link" / INDEX_FILE).exists()
    finally:
        link.unlink()
    # a folder listing skips the link too (named, with the reason)
    from asca_core.inference import audio_files

    folder = shutil.copytree(recordings, tmp_path / "recs", symlinks=True)
    (folder / "escape.wav").symlink_to(tmp_path / "secret.wav")
    files, left_out = audio_files(folder)
    assert "escape.wav" not in [f.name for f in files] and "escape.wav" in [Path(n).name for n, _ in left_out]


def test_windows_scored_in_several_passes_give_the_same_outputs(clf, monkeypatch):
    """A CPU batch is split into passes of a bounded number of cells; what comes out does not change."""
    import asca_core.utils

    rng = np.random.default_rng(7)
    waves = (0.1 * rng.standard_normal((7, int(clf.clip_seconds * clf.sample_rate)))).astype(np.float32)
    whole = clf.window_outputs(waves)
    probs = clf.predict_windows(waves)
    cells = clf.spectrogram(waves[0])[0].numel()
    monkeypatch.setattr(asca_core.utils, "CPU_BATCH_CELLS", 2 * cells)  # passes of 2, 2, 2 and 1
    assert clf._rows_per_pass(clf.spectrogram(waves[0]).expand(7, -1, -1, -1)) == 2
    split = clf.window_outputs(waves)
    np.testing.assert_allclose(split.logits, whole.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.embeddings, whole.embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.predict_windows(waves), probs, rtol=1e-5, atol=1e-6)
    assert split.embeddings.shape == (7, whole.embeddings.shape[1])
