"""One classifier shared by many threads, as the app's cached model is shared by browser sessions.

Eight threads predict, capture attention and attribute (five methods) on the same model at once;
every result must equal the serial result for the same input, no hook may stay on the shared
model, and a watcher thread checks that nothing the others see (train/eval flags, hooks, capture
sinks) changes while they run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_runs import PICO_CONFIG, PICO_LABELS

from asca_core.config import Config
from asca_core.inference import Classifier
from asca_core.inspect import capture_attention
from asca_core.inspect.attribution import METHODS, attribute
from asca_core.inspect.views import attention_views
from asca_core.models.attention import MultiHeadAttention
from asca_core.train.checkpoint import model_from_config

SR = 16000
N_THREADS = 8
ROUNDS = 2
HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)
OPTIONS = {"integrated_gradients": {"n_steps": 8}, "occlusion": {"patch": (16, 16), "stride": (16, 16)}}


def _hooks(model: torch.nn.Module) -> dict[tuple[str, str], tuple[int, ...]]:
    return {
        (path, name): tuple(getattr(m, name, {}) or {})
        for path, m in model.named_modules()
        for name in HOOKS
        if getattr(m, name, None)
    }


def _flags(model: torch.nn.Module) -> tuple[bool, ...]:
    return tuple(m.training for m in model.modules())


def _wave(seed: int) -> np.ndarray:
    """Noise and a tone at a seed-dependent pitch and time: every thread scores a different clip."""
    rng = np.random.default_rng(seed)
    wave = 0.02 * rng.standard_normal(SR)
    t = np.arange(SR) / SR
    on = (t > 0.1 + 0.05 * seed) & (t < 0.4 + 0.05 * seed)
    wave[on] += 0.5 * np.sin(2 * np.pi * (500 + 250 * seed) * t[on])
    return wave.astype(np.float32)


def _predict(clf: Classifier, wave: np.ndarray) -> dict[str, np.ndarray]:
    pred = clf.predict(wave, sample_rate=SR)
    return {"probs_max": pred.probs_max, "probs_mean": pred.probs_mean}


def _capture(clf: Classifier, wave: np.ndarray) -> dict[str, np.ndarray]:
    spec = clf.spectrogram(wave)
    with torch.no_grad(), capture_attention(clf.model) as maps:
        logits = clf.model(spec)
    return {"logits": logits.numpy(), **{name: m.probs.numpy() for name, m in maps.items()}}


def _views(clf: Classifier, wave: np.ndarray) -> dict[str, np.ndarray]:
    views = attention_views(clf, wave, sample_rate=SR)
    out = {f"{name}.heads": b.heads for name, b in views.blocks.items()}
    return {**out, "rollout": views.rollout, "probs": views.probs}


def _attribution(method: str) -> Callable[[Classifier, np.ndarray], dict[str, np.ndarray]]:
    def run(clf: Classifier, wave: np.ndarray) -> dict[str, np.ndarray]:
        attr = attribute(clf, wave, method=method, target=1, sample_rate=SR, **OPTIONS.get(method, {}))
        return {"map": attr.map}

    return run


TASKS: dict[str, Callable[[Classifier, np.ndarray], dict[str, np.ndarray]]] = {
    "predict": _predict,
    "capture": _capture,
    "attention_views": _views,
    **{method: _attribution(method) for method in METHODS},
}


@pytest.fixture(scope="module")
def clf() -> Classifier:
    """An untrained asca_pico with two attention stages (C-C-T-T), one instance for all threads."""
    cfg = Config.from_dict({**PICO_CONFIG, "model": {"name": "asca_pico", "layout": "CCTT"}})
    torch.manual_seed(0)
    return Classifier(model_from_config(cfg, len(PICO_LABELS)), cfg, PICO_LABELS)


@pytest.fixture(scope="module")
def serial(clf) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    return {(task, seed): run(clf, _wave(seed)) for task, run in TASKS.items() for seed in range(N_THREADS)}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert got.keys() == want.keys(), what
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{what}: {key}")


def _run_threads(work: Callable[[int], Any], watch: Callable[[], list[str]] | None = None) -> list[Any]:
    """Run ``work(i)`` in N_THREADS threads started together; re-raise the first failure."""
    results: list[Any] = [None] * N_THREADS
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)
    done = threading.Event()
    seen: list[str] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    def watcher() -> None:
        while not done.is_set():
            seen.extend(watch())
            done.wait(0.001)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(N_THREADS)]
    spy = threading.Thread(target=watcher) if watch else None
    for thread in threads + ([spy] if spy else []):
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    done.set()
    if spy:
        spy.join()
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not seen, seen[:5]
    return results


@pytest.mark.slow
def test_threads_sharing_one_model_get_the_serial_results(clf, serial):
    model = clf.model
    hooks, flags = _hooks(model), _flags(model)
    attns = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    names = list(TASKS)

    def work(i: int) -> dict[tuple[str, int], dict[str, np.ndarray]]:
        # each thread scores its own clip, starting at a different task, so every kind of call
        # overlaps every other
        out = {}
        for r in range(ROUNDS):
            for k in range(len(names)):
                task = names[(i + k + r) % len(names)]
                out[(task, i, r)] = TASKS[task](clf, _wave(i))
        return out

    def watch() -> list[str]:
        problems = []
        if _flags(model) != flags:
            problems.append("a train/eval flag of the shared model changed")
        if _hooks(model) != hooks:
            problems.append(f"hooks on the shared model changed: {_hooks(model)}")
        if any(a.capture is not None for a in attns):
            problems.append("another thread's capture is visible outside it")
        return problems

    for result in _run_threads(work, watch):
        for (task, seed, r), got in result.items():
            _assert_same(got, serial[(task, seed)], f"{task} of clip {seed}, round {r}")
    assert _hooks(model) == hooks == {}
    assert _flags(model) == flags and not any(flags)
    assert all(a.capture is None for a in attns)


def test_a_failing_call_leaves_the_other_threads_and_the_model_clean(clf, serial, monkeypatch):
    """Half the threads fail: inside a capture, and in the middle of a Grad-CAM forward (its
    Captum hooks registered). The other threads' results, a caller's own hook on the shared
    model and the model itself are unaffected."""
    from asca_core.inspect import attribution

    model = clf.model
    calls = []
    user_hook = model.head.register_forward_hook(lambda *args: calls.append(1))  # a caller's own hook
    hooks = _hooks(model)
    failing: set[int] = set()
    make_private = attribution.private_model

    class Boom(RuntimeError):
        pass

    def broken_head(x):
        raise Boom()

    def private_model(shared):
        copy = make_private(shared)
        if threading.get_ident() in failing:
            copy.head.forward = broken_head
        return copy

    monkeypatch.setattr(attribution, "private_model", private_model)

    def work(i: int) -> Any:
        wave = _wave(i)
        if i % 2 == 0:
            return {
                "capture": _capture(clf, wave),
                "saliency": TASKS["saliency"](clf, wave),
                "gradcam_attention": TASKS["gradcam_attention"](clf, wave),
            }
        with pytest.raises(Boom):
            with capture_attention(model):
                clf.model(clf.spectrogram(wave))
                raise Boom()
        failing.add(threading.get_ident())
        with pytest.raises(Boom):
            TASKS["gradcam_attention"](clf, wave)
        failing.discard(threading.get_ident())
        return {"gradcam_attention": TASKS["gradcam_attention"](clf, wave)}

    try:
        results = _run_threads(work)
    finally:
        user_hook_present = _hooks(model) == hooks
        user_hook.remove()
    assert user_hook_present, "a call removed a hook it did not add"
    assert calls, "the caller's hook stopped firing"
    for i, result in enumerate(results):
        for task, got in result.items():
            _assert_same(got, serial[(task, i)], f"{task} of clip {i}")
    assert _hooks(model) == {} and "forward" not in vars(model.head)
    assert all(a.capture is None for a in model.modules() if isinstance(a, MultiHeadAttention))


def test_two_threads_may_capture_the_same_model_at_once(clf):
    """A capture is per thread: a second one in another thread neither fails nor records the first's."""
    inside = threading.Barrier(2, timeout=60)
    specs = [clf.spectrogram(_wave(i)) for i in range(2)]

    def work(i: int) -> np.ndarray:
        with torch.no_grad(), capture_attention(clf.model) as maps:
            inside.wait()  # both captures are open
            clf.model(specs[i])
            inside.wait()  # both forwards ran
            return {name: m.probs.clone() for name, m in maps.items()}

    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, work(i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i in range(2):
        with torch.no_grad(), capture_attention(clf.model) as maps:
            clf.model(specs[i])
        assert results[i] is not None and results[i].keys() == maps.keys()
        for name in maps:
            torch.testing.assert_close(results[i][name], maps[name].probs, rtol=1e-5, atol=1e-6)
