"""Review to retrain: the manifest, spans as a dataset, ranked detections, cutting, retraining."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from review_factory import long_recording, overlap

from asca_core.audio import load_audio
from asca_core.cli import main
from asca_core.data import load_dataset
from asca_core.data.check import check_dataset
from asca_core.errors import DatasetError
from asca_core.review import (
    MANIFEST_COLUMNS,
    ReviewRow,
    compare_runs,
    compare_table,
    cut_clips,
    find_candidates,
    read_manifest,
    retrain_dataset,
    review_origin,
    start_retrain,
    write_manifest,
)

HEADER = ",".join(MANIFEST_COLUMNS)


@pytest.fixture
def recs(tmp_path: Path):
    """Two 20-30 s recordings of demo calls in quiet noise, and their true spans."""
    folder = tmp_path / "recs"
    spans = long_recording(folder / "a.wav", ["trill", "buzz", "warble", "trill"], seed=11)
    spans += long_recording(folder / "b.wav", ["rising_chirp", "click_train", "buzz"], seed=11, first=10)
    return folder, spans


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_merge_keeps_decisions(recs):
    folder, spans = recs
    out = folder / "review.csv"
    rows = [ReviewRow(str(s.file), s.start, s.end, s.label, "", predicted=s.label, score=0.9) for s in spans]
    write_manifest(out, rows)
    text = out.read_text(encoding="utf-8").splitlines()
    assert text[0] == "file,start,end,label,decision,predicted,score"
    assert text[1].startswith("a.wav,")  # relative to the manifest's folder
    back = read_manifest(out)
    assert [(Path(r.file).name, r.start, r.end, r.label, r.decision) for r in back] == [
        (s.file.name, s.start, s.end, s.label, "") for s in spans
    ]
    # decide two spans, then export again (all pending): the decisions stay, nothing doubles
    first, second = back[0], back[1]
    write_manifest(
        out,
        [
            ReviewRow(first.file, first.start, first.end, "warble", "relabel"),
            ReviewRow(second.file, second.start, second.end, second.label, "reject"),
        ],
    )
    write_manifest(out, rows)
    again = {(Path(r.file).name, r.start): (r.label, r.decision) for r in read_manifest(out)}
    assert len(again) == len(spans)
    assert again[("a.wav", first.start)] == ("warble", "relabel")
    assert again[("a.wav", second.start)] == (second.label, "reject")
    # a later decision on a decided span replaces it
    write_manifest(out, [ReviewRow(first.file, first.start, first.end, "trill", "accept")])
    assert {(Path(r.file).name, r.start): r.decision for r in read_manifest(out)}[("a.wav", first.start)] == "accept"


@pytest.mark.parametrize(
    "body, message",
    [
        ("file,start,end,label\na.wav,0,1,x\n", "missing column decision"),
        (f"{HEADER}\na.wav,zero,1,x,accept\n", "line 2: start must be a number"),
        (f"{HEADER}\na.wav,1,nan,x,accept\n", "line 2: end must be a number"),
        (f"{HEADER}\na.wav,2,2,x,accept\n", "line 2: the span must have 0 <= start < end"),
        (f"{HEADER}\na.wav,-1,2,x,accept\n", "0 <= start < end"),
        (f"{HEADER}\na.wav,0,1,x,maybe\n", "line 2: unknown decision 'maybe'"),
        (f"{HEADER}\na.wav,0,1,,relabel\n", "line 2: relabel needs a label"),
        (f"{HEADER}\na.wav,0,1,x,accept,extra\n", "line 2 has 6 fields"),
        (f'{HEADER}\n"a.wav,0,1,x,accept\n', "line 2 has 1 fields"),
        (f"{HEADER}\n../outside.wav,0,1,x,accept\n", "outside the dataset root"),
        (f"{HEADER}\n/etc/passwd,0,1,x,accept\n", "outside the dataset root"),
        ("", "empty manifest"),
    ],
)
def test_read_manifest_rejects_bad_rows(tmp_path, body, message):
    path = write_csv(tmp_path / "m.csv", body)
    with pytest.raises(DatasetError, match=message) as info:
        read_manifest(path)
    assert "m.csv" in str(info.value)


def test_read_manifest_rejects_a_symlink_out_of_its_folder(tmp_path, recs):
    folder, _ = recs
    inner = tmp_path / "inner"
    inner.mkdir()
    os.symlink(folder / "a.wav", inner / "link.wav")
    path = write_csv(inner / "m.csv", f"{HEADER}\nlink.wav,0,1,trill,accept\n")
    with pytest.raises(DatasetError, match=r"line 2: link.wav is outside the dataset root \(through a symlink\)"):
        read_manifest(path)
    assert read_manifest(path, root=tmp_path)[0].label == "trill"  # inside the given root it is fine


# ------------------------------------------------------------------------ spans as a dataset


def test_manifest_is_a_dataset_of_kept_spans_and_decodes_exactly_the_span(recs):
    from asca_core.config import FeatureConfig
    from asca_core.data import ClipDataset, FeatureCache

    folder, spans = recs
    s0, s1, s2 = spans[0], spans[1], spans[2]
    path = write_csv(
        folder / "review.csv",
        f"{HEADER}\n"
        f"a.wav,{s0.start},{s0.end},trill,accept\n"
        f"a.wav,{s1.start},{s1.end},buzz,reject\n"
        f"a.wav,{s2.start},{s2.end},new_call,relabel\n"
        f"b.wav,1.000,2.500,buzz,\n"
        f"a.wav,0.250,1.250,trill,accept\n",
    )
    index = load_dataset(path)
    assert index.format == "review"
    assert [(c.path.name, c.start, c.end, c.labels) for c in index.clips] == [
        ("a.wav", s0.start, s0.end, ("trill",)),
        ("a.wav", s2.start, s2.end, ("new_call",)),
        ("a.wav", 0.25, 1.25, ("trill",)),
    ]
    assert index.classes == ["new_call", "trill"]
    assert load_dataset(folder / "review.csv", format="review").clips[0].start == s0.start
    whole = load_audio(folder / "a.wav", sample_rate=16000)
    cfg = FeatureConfig(sample_rate=16000, clip_seconds=3.0)
    for cache in (None, FeatureCache(folder.parent / "cache")):
        ds = ClipDataset(index, [0, 1, 2], cfg, cache=cache)
        for clip in index.clips:
            a, b = round(clip.start * 16000), round(clip.end * 16000)
            span = ds.load_span(clip.path, clip.start, clip.end)
            np.testing.assert_allclose(span, whole[a:b], atol=1e-6)
        wave = ds.load_wave(0)  # a 3 s span in a 3 s window: the span itself
        a = round(s0.start * 16000)
        np.testing.assert_allclose(wave, whole[a : a + 48000], atol=1e-6)
        short = ds.load_wave(2)  # a 1 s span, centred in zeros
        assert np.count_nonzero(short[:16000]) == 0 and np.count_nonzero(short[-16000:]) == 0
        np.testing.assert_allclose(short[16000:32000], whole[4000:20000], atol=1e-6)


def test_data_check_reads_a_manifest_and_flags_spans_past_the_end(recs):
    folder, spans = recs
    rows = "".join(f"{s.file.name},{s.start},{s.end},{s.label},accept\n" for s in spans)
    path = write_csv(folder / "review.csv", f"{HEADER}\n{rows}a.wav,500,501,trill,accept\n")
    report = check_dataset(path)
    assert report.format == "review"
    assert report.listed == len(spans) + 1 and report.usable == len(spans)
    assert report.durations["max"] == pytest.approx(3.0)
    assert any("lies beyond the file" in why for _f, why in report.problems)
    assert main(["data", "check", str(path)]) in (0, 1)


def test_cut_clips_writes_a_plain_dataset(recs, tmp_path):
    folder, spans = recs
    rows = "".join(f"{s.file.name},{s.call_start},{s.call_end},{s.label},accept\n" for s in spans[:3])
    path = write_csv(folder / "review.csv", f"{HEADER}\n{rows}b.wav,0.5,1.5,trill,reject\n")
    labels = cut_clips(path, tmp_path / "cut")
    index = load_dataset(labels.parent)
    assert index.format == "csv" and len(index.clips) == 3
    whole = load_audio(folder / "a.wav", sample_rate=16000)
    for clip, span in zip(index.clips, spans[:3]):
        assert clip.labels == (span.label,)
        wave, rate = sf.read(clip.path, dtype="float32")
        a, b = round(span.call_start * 16000), round(span.call_end * 16000)
        assert rate == 16000 and abs(wave.size - (b - a)) <= 1
        np.testing.assert_allclose(wave[: b - a - 1], whole[a : b - 1], atol=1 / 16000 + 1e-6)


# --------------------------------------------------------------------------- retraining data


def test_retrain_dataset_keeps_the_parents_test_set_and_adds_spans_to_training(pico_run, recs, tmp_path):
    from asca_core.config import load_config
    from asca_core.train.data import prepare_data

    folder, spans = recs
    rows = "".join(f"{s.file.name},{s.start},{s.end},{s.label},accept\n" for s in spans)
    rows += f"a.wav,{spans[1].start},{spans[1].end},buzz,reject\n".replace(str(spans[1].start), "0.100")
    manifest = write_csv(folder / "review.csv", f"{HEADER}\n{rows}")
    combined = retrain_dataset(pico_run, manifest, tmp_path / "combined")
    parent = prepare_data(load_config(pico_run / "config.yaml"))
    child = prepare_data(load_config(pico_run / "config.yaml").replace("data.path", str(combined)))
    for split in ("train", "val", "test"):
        before = sorted(
            (str(parent.index.clips[i].path.resolve()), parent.index.clips[i].labels) for i in parent.splits[split]
        )
        after = sorted(
            (str(child.index.clips[i].path.resolve()), child.index.clips[i].labels) for i in child.splits[split]
        )
        if split == "train":
            added = [c for c in after if c not in before]
            assert len(after) == len(before) + len(spans)
            assert sorted(Path(p).name for p, _ in added) == sorted(s.file.name for s in spans)
        else:
            assert after == before, split
    record = json.loads((combined.parent / "dataset.json").read_text())
    assert record["reviewed_spans"] == len(spans) and record["splits"]["test"] == len(parent.splits["test"])


def test_compare_runs_on_one_test_set(pico_run, tmp_path):
    from asca_core.data.demo import make_clip

    data = _mkdir(tmp_path / "test")
    lines = ["filename,label"]
    for label in ("trill", "buzz"):
        for k in range(3):
            sf.write(data / f"{label}{k}.wav", make_clip(label, 5, k)[0], 16000, subtype="PCM_16")
            lines.append(f"{label}{k}.wav,{label}")
    write_csv(data / "labels.csv", "\n".join(lines) + "\n")
    result = compare_runs(pico_run, pico_run, data=data)
    assert result["n"] == 6 and result["before"]["overall"] == result["after"]["overall"]
    assert set(result["before"]["per_class"]) == {"trill", "buzz"}
    acc = result["before"]["overall"]["acc"]
    assert acc == pytest.approx(np.mean([v["acc"] for v in result["before"]["per_class"].values()]))
    bad = _mkdir(tmp_path / "bad")
    sf.write(bad / "x.wav", make_clip("warble", 5, 0)[0], 16000)
    write_csv(bad / "labels.csv", "filename,label\nx.wav,warble\n")
    with pytest.raises(DatasetError, match="classes neither run knows: warble"):
        compare_runs(pico_run, pico_run, data=bad)
    table = compare_table(result)
    assert table.count("\n| ") >= 1 + len(result["before"]["per_class"]) and "| **all** |" in table


# --------------------------------------------------------------------------------------- CLI


def test_cli_export_cut_and_errors(pico_run, recs, tmp_path, capsys):
    folder, _spans = recs
    out = folder / "review.csv"
    assert (
        main(["review", "export", str(pico_run), str(folder), "--out", str(out), "--threshold", "0", "--limit", "5"])
        == 0
    )
    rows = read_manifest(out)
    assert 1 <= len(rows) <= 5 and all(r.decision == "" and r.predicted for r in rows)
    # decide one, export again ranked by uncertainty with no detections (every window a
    # candidate of its own): new rows come in, the decision survives
    first = rows[0]
    write_manifest(out, [ReviewRow(first.file, first.start, first.end, "buzz", "relabel")])
    assert (
        main(
            [
                "review",
                "export",
                str(pico_run),
                str(folder),
                "--out",
                str(out),
                "--rank",
                "uncertainty",
                "--threshold",
                "1",
            ]
        )
        == 0
    )
    again = read_manifest(out)
    assert [(r.label, r.decision) for r in again if r.key() == first.key()] == [("buzz", "relabel")]
    assert len(again) > len(rows)
    capsys.readouterr()
    assert main(["review", "cut", str(out), "--out", str(tmp_path / "cut")]) == 0
    assert "1 clip(s) written" in capsys.readouterr().out
    # a manifest outside the recordings' folder, bad files: one line each, no traceback
    assert main(["review", "export", str(pico_run), str(folder), "--out", str(tmp_path / "x" / "m.csv")]) == 2
    assert "not inside" in capsys.readouterr().err
    bad = write_csv(folder / "bad.csv", f"{HEADER}\na.wav,3,1,x,accept\n")
    assert main(["review", "cut", str(bad), "--out", str(tmp_path / "c2")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: line 2" in err and "Traceback" not in err


# ------------------------------------------------------------------------- a trained model


@pytest.mark.slow
def test_find_candidates_finds_the_known_spans(demo_run, recs):
    from asca_core.inference import Classifier

    folder, spans = recs
    clf = Classifier.from_run(demo_run)
    found = find_candidates(clf, [folder / "a.wav", folder / "b.wav"], rank="confidence")
    assert found == sorted(found, key=lambda c: -c.score)
    # every placed call is covered by a detection of its label at an even threshold (the run's own
    # thresholds aim at precision: on validation they already miss some calls of some classes)
    even = find_candidates(clf, [folder / "a.wav", folder / "b.wav"], rank="confidence", threshold=0.5)
    for span in spans:
        hits = [c for c in even if Path(c.file).name == span.file.name and c.label == span.label]
        assert any(overlap(c.start, c.end, span.call_start, span.call_end) > 0 for c in hits), span
    # at the run's thresholds, detections are mostly on calls, not in the gaps
    assert found
    on_calls = [
        c
        for c in found
        if any(Path(c.file).name == s.file.name and overlap(c.start, c.end, s.start, s.end) > 0.5 for s in spans)
    ]
    assert len(on_calls) >= 0.8 * len(found)
    uncertain = find_candidates(clf, [folder / "a.wav"], rank="uncertainty", limit=4)
    assert len(uncertain) == 4 and uncertain == sorted(uncertain, key=lambda c: -c.uncertainty)
    # every window on its own (threshold 1): what the model makes of a gap cannot merge it into a call
    unknown = find_candidates(clf, [folder / "a.wav"], rank="unknown", threshold=1.0)
    assert [c.unknown for c in unknown] == sorted((c.unknown for c in unknown), reverse=True)
    gaps = [
        c
        for c in unknown
        if not any(overlap(c.start, c.end, s.start, s.end) > 0 for s in spans if s.file.name == "a.wav")
    ]
    calls = [
        c
        for c in unknown
        if any(overlap(c.start, c.end, s.call_start, s.call_end) > 0.3 for s in spans if s.file.name == "a.wav")
    ]
    assert gaps and calls and np.mean([c.unknown for c in gaps]) > np.mean([c.unknown for c in calls])


SEEN = ["rising_chirp", "falling_chirp", "trill"]


@pytest.mark.slow
def test_review_relabel_retrain_improves_the_relabelled_class(tmp_path):
    """A parent that never heard 'buzz'; its detections in recordings full of buzz calls are
    relabelled 'buzz' in the manifest; the retrained run recognises buzz on a held-out test set."""
    from asca_core.config import load_config
    from asca_core.data.demo import make_clip
    from asca_core.train.engine import fit

    # the parent's dataset: three demo classes, 20 clips each
    data = tmp_path / "parent-data"
    with open(_mkdir(data) / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        for label in SEEN:
            for k in range(20):
                sf.write(data / f"{label}-{k}.wav", make_clip(label, 3, k)[0], 16000, subtype="PCM_16")
                w.writerow([f"{label}-{k}.wav", label])
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
        ["train.device=cpu", "train.num_threads=2", f"data.path={data}", "train.epochs=12", "train.budget_seconds=60"],
    )
    parent = tmp_path / "runs" / "parent"
    assert fit(cfg, parent, progress=False)["state"] == "finished"
    # long recordings with buzz calls between known ones; every buzz span relabelled, others accepted
    folder = tmp_path / "recs"
    spans = []
    for n in range(4):
        spans += long_recording(
            folder / f"r{n}.wav", ["buzz", "trill", "buzz", "rising_chirp", "buzz"], seed=21, first=10 * n
        )
    write_manifest(
        folder / "review.csv",
        [ReviewRow(str(s.file), s.start, s.end, s.label, "relabel" if s.label == "buzz" else "accept") for s in spans],
    )
    # a held-out test set with buzz
    test = tmp_path / "test"
    with open(_mkdir(test) / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        for label in [*SEEN, "buzz"]:
            for k in range(8):
                sf.write(test / f"{label}-{k}.wav", make_clip(label, 77, k)[0], 16000, subtype="PCM_16")
                w.writerow([f"{label}-{k}.wav", label])
    child = start_retrain(parent, folder / "review.csv", budget="75s", background=False)
    assert review_origin(child)["parent_run"] == str(parent.resolve())
    assert "buzz" in json.loads((child / "labels.json").read_text())
    result = compare_runs(parent, child, data=test)
    print(compare_table(result))
    before, after = result["before"]["per_class"]["buzz"], result["after"]["per_class"]["buzz"]
    assert before["acc"] == 0.0
    assert after["acc"] >= 0.75 and after["ap"] > before["ap"] + 0.3
    assert result["after"]["overall"]["acc"] > result["before"]["overall"]["acc"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
