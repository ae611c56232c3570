"""The store: rows written durably, completed-mask, and clear errors for mismatched or corrupt stores."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter

import numpy as np
import pytest
from conftest import snapshot

import memlib
import memlib.runs.slurm
import memlib.runs.store
import memlib.runs.subsets
from memlib.runs.store import FORMAT, FormatError, NeedsRepair, SpecUnreadable, Store, StoreError
from memlib.runs.subsets import open_subset_store
from memlib.train.design import subset_mask, subset_masks

META = {"fingerprint": "a", "config": {"k": "a"}}


def make(tmp_path, fingerprint="a"):
    spec = Store.spec_of(4, {"x": ((3,), "float32"), "ok": ((5,), "bool")})
    return Store.open(tmp_path / "s", spec, {"fingerprint": fingerprint, "config": {"k": fingerprint}}), spec


def test_rows_persist_and_completed_mask(tmp_path):
    store, spec = make(tmp_path)
    assert store.pending() == [0, 1, 2, 3]
    store.write_row(2, {"x": np.array([1, 2, 3], np.float32), "ok": np.ones(5, bool)})
    again = Store.open(tmp_path / "s", spec, store.meta)
    assert again.pending() == [0, 1, 3]
    assert again.done() == 1
    np.testing.assert_array_equal(again["x"][2], [1, 2, 3])
    with pytest.raises(StoreError, match="3 of 4 rows unfinished"):
        again.require_complete()


def test_other_config_is_refused_and_names_the_difference(tmp_path):
    _, spec = make(tmp_path, "a")
    with pytest.raises(StoreError, match=r"different config \(k: 'a' -> 'b'\)"):
        Store.open(tmp_path / "s", spec, {"fingerprint": "b", "config": {"k": "b"}})


def test_other_shape_is_refused(tmp_path):
    make(tmp_path)
    spec = Store.spec_of(5, {"x": ((3,), "float32"), "ok": ((5,), "bool")})
    with pytest.raises(StoreError, match="expected"):
        Store.open(tmp_path / "s", spec, {"fingerprint": "a", "config": {"k": "a"}})


def full(tmp_path):
    """A store of 4 finished rows."""
    store, spec = make(tmp_path)
    for r in range(4):
        store.write_row(r, {"x": np.arange(3, dtype=np.float32) + r, "ok": np.arange(5) % (r + 2) == 0})
    return store, spec


def test_truncated_array_is_refused_and_never_extended(tmp_path):
    store, spec = full(tmp_path)
    file = store.path / "x.npy"
    size = file.stat().st_size
    del store
    os.truncate(file, size - 20)  # rows 2 and 3 lose bytes
    before = snapshot(tmp_path)
    for writable in (False, True):
        with pytest.raises(StoreError, match=r"x.npy is \d+ bytes, its header says \d+ \(rows 2-3 are cut off\)"):
            Store.open(tmp_path / "s", spec, META, create=writable, writable=writable)
    assert snapshot(tmp_path) == before  # numpy's r+ memmap would have zero-filled it back to size
    assert Store.repair(tmp_path / "s") == [2, 3]
    again = Store.open(tmp_path / "s", spec, META)
    assert again.pending() == [2, 3] and file.stat().st_size == size


def test_unreadable_header_is_refused_and_repair_keeps_it_beside(tmp_path):
    store, spec = full(tmp_path)
    file = store.path / "x.npy"
    del store
    file.write_bytes(file.read_bytes()[:60])
    with pytest.raises(StoreError, match="corrupt: x.npy has no readable header"):
        Store.open(tmp_path / "s", spec, META)
    assert Store.repair(tmp_path / "s") == [0, 1, 2, 3]
    assert (tmp_path / "s" / "x.npy.corrupt").exists()


@pytest.mark.parametrize("name", ["x", "ok"])
def test_any_changed_value_of_a_finished_row_is_named(tmp_path, name):
    store, spec = full(tmp_path)
    arr = np.load(store.path / f"{name}.npy", mmap_mode="r+")
    arr[2, 1] = not arr[2, 1] if arr.dtype == bool else arr[2, 1] + 1e-3
    arr.flush()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=rf"1 of 4 finished rows .* fail their checksums.*: rows 2 \(arrays: {name}\)"):
        Store.open(tmp_path / "s", spec, META, create=False)
    assert snapshot(tmp_path) == before
    assert Store.repair(tmp_path / "s") == [2]
    assert Store.open(tmp_path / "s", spec, META).pending() == [2]


def test_a_row_marked_complete_without_being_written_is_caught(tmp_path):
    store, spec = make(tmp_path)
    store.write_row(0, {"x": np.ones(3, np.float32), "ok": np.ones(5, bool)})
    store.completed[3] = True  # zeros, never written: no checksum
    store.arrays["x"][1] = 5  # written but not marked complete: not read, not an error
    store.completed.flush()
    with pytest.raises(StoreError, match="rows 3 "):
        Store.open(tmp_path / "s", spec, META)


def test_rows_swapped_or_copied_do_not_verify(tmp_path):
    store, spec = full(tmp_path)
    for name in ("x", "ok", "checksums"):
        store.arrays[name][1] = store.arrays[name][0]  # row 0's values and checksums, moved to row 1
    with pytest.raises(StoreError, match="rows 1 "):
        store.check()


def test_read_only_store_writes_nothing(tmp_path):
    store, spec = full(tmp_path)
    before = snapshot(tmp_path)
    ro = Store.open(tmp_path / "s", spec, META, create=False)
    with pytest.raises(StoreError, match="read-only"):
        ro.write_row(0, {"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError):
        ro["x"][0] = 1
    assert snapshot(tmp_path) == before


def test_a_full_disk_ends_with_a_message_and_the_rerun_resumes(tmp_path, monkeypatch):
    """Rows are written with file writes, so a full disk is an OSError (ENOSPC), not a bus error under a map."""
    import errno

    store, spec = make(tmp_path)
    store.write_row(0, {"x": np.ones(3, np.float32), "ok": np.ones(5, bool)})
    real = os.pwrite

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StoreError, match=r"disk holding .* is full .* rows 1-2 .* rerun the same command"):
        store.write_rows({r: {"x": np.full(3, r, np.float32), "ok": np.ones(5, bool)} for r in (1, 2)})
    monkeypatch.setattr(os, "pwrite", real)
    again = Store.open(tmp_path / "s", spec, store.meta)  # every finished row verifies; the others are pending
    assert again.pending() == [1, 2, 3]
    again.write_rows({r: {"x": np.full(3, r, np.float32), "ok": np.ones(5, bool)} for r in (1, 2)})
    again = Store.open(tmp_path / "s", spec, store.meta)
    assert again.pending() == [3]
    np.testing.assert_array_equal(again["x"][:3], [[1, 1, 1], [1, 1, 1], [2, 2, 2]])


def test_written_rows_equal_what_a_memory_map_would_hold(tmp_path):
    """Values are cast and broadcast as `arr[row] = value` would (a scalar fills a row, float64 becomes float32)."""
    store, spec = make(tmp_path)
    store.write_rows({1: {"x": 0.5, "ok": np.array([1, 0, 1, 0, 1])}, 3: {"x": np.arange(3.0)}})
    again = Store.open(tmp_path / "s", spec, store.meta)
    np.testing.assert_array_equal(again["x"][[1, 3]], [[0.5] * 3, [0, 1, 2]])
    np.testing.assert_array_equal(again["ok"][1], [True, False, True, False, True])
    assert again.pending() == [0, 2]


def test_repair_on_a_read_only_folder_changes_nothing(tmp_path, monkeypatch):
    store, spec = full(tmp_path)
    before = snapshot(tmp_path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not mode & os.W_OK and real(p, mode, **kw))
    with pytest.raises(StoreError, match="cannot be written here .* Nothing was changed"):
        Store.repair(tmp_path / "s", spec, META)
    assert snapshot(tmp_path) == before


def test_unreadable_spec_is_reported(tmp_path):
    store, spec = make(tmp_path)
    (store.path / "spec.json").write_text("{not json")
    with pytest.raises(SpecUnreadable, match="Nothing was changed. Move .* away and rerun the stage that made it"):
        Store.open(tmp_path / "s", spec, store.meta)
    # one message wherever the spec is read: repair where it can rewrite the spec, else move the store away
    with pytest.raises(SpecUnreadable) as read:
        memlib.runs.subsets.stored_meta(tmp_path / "s")
    with pytest.raises(SpecUnreadable) as rebuilt:
        memlib.runs.subsets.stored_meta(tmp_path / "s", rebuilt_by="smoke")
    assert read.value.what == rebuilt.value.what and "unreadable" in read.value.what
    assert "Run `python -m memlib repair smoke`: it rewrites it" in str(rebuilt.value)
    # the command line names the profile as it was given (a path here)
    assert "Run `python -m memlib repair my/smoke.yaml`: it rewrites" in rebuilt.value.message("my/smoke.yaml")


def test_rewording_store_messages_changes_no_behaviour(smoke, digits, monkeypatch):
    """Fault: code that decides on an error's words, as repair once did (`"unreadable" in str(exc)`): with every
    store message reworded, repair still rewrites a cut spec.json of stage 1's store and keeps its finished rows."""
    cfg = smoke.replace(num_models=16, min_out=1)
    store = open_subset_store(cfg, digits)
    store.write_rows({r: {"masks": m} for r, m in enumerate(subset_masks(cfg, digits.n_train))})
    text = (store.path / "spec.json").read_text()
    (store.path / "spec.json").write_text(text[: len(text) // 2])
    del store
    monkeypatch.setattr(StoreError, "__str__", lambda self: "reworded")
    monkeypatch.setattr(StoreError, "message", lambda self, profile=None: "reworded", raising=False)
    with pytest.raises(StoreError, match="reworded"):
        open_subset_store(cfg, digits, create=False)
    assert memlib.runs.subsets.repair_subset_store(cfg, digits) == []
    assert open_subset_store(cfg, digits, create=False).done() == 16


def test_store_errors_pickle_whole():
    """A worker's StoreError reaches the parent whole (fault: an error whose arguments cannot rebuild it)."""
    import pickle

    error = NeedsRepair("rows 3 fail.", "Run `{repair}` to clear them.", "/x/store", "smoke")
    again = pickle.loads(pickle.dumps(error))
    assert (
        type(again) is NeedsRepair
        and str(again) == str(error) == "rows 3 fail. Run `python -m memlib repair smoke` to clear them."
    )


def test_folder_without_spec_is_refused_never_removed(tmp_path):
    store, spec = full(tmp_path)
    (store.path / "spec.json").unlink()
    before = snapshot(tmp_path)
    for create in (True, False):
        with pytest.raises(
            StoreError, match=r"holds \d+ files \(.*x.npy.*4 rows marked finished\) but no readable spec"
        ):
            Store.open(tmp_path / "s", spec, META, create=create)
    assert snapshot(tmp_path) == before
    with pytest.raises(StoreError, match="none of the 4 finished rows .* verify under this config"):
        Store.repair(tmp_path / "s", spec, {"fingerprint": "b", "config": {"k": "b"}})
    assert snapshot(tmp_path) == before
    assert Store.repair(tmp_path / "s", spec, META) == []  # the config that made it: every row adopted
    assert Store.open(tmp_path / "s", spec, META).done() == 4


def test_lost_completed_mask_is_rebuilt_from_the_checksums(tmp_path):
    store, spec = make(tmp_path)
    store.write_row(1, {"x": np.ones(3, np.float32), "ok": np.ones(5, bool)})
    (store.path / "completed.npy").unlink()
    with pytest.raises(StoreError, match="completed.npy is missing"):
        Store.open(tmp_path / "s", spec, META)
    assert Store.repair(tmp_path / "s") == [0, 2, 3]  # never written: not finished
    assert Store.open(tmp_path / "s", spec, META).pending() == [0, 2, 3]


def test_empty_folder_becomes_a_store(tmp_path):
    (tmp_path / "s").mkdir()
    store, _ = make(tmp_path)
    assert store.pending() == [0, 1, 2, 3]


def _create_at_once(path, barrier, spec, queue):
    barrier.wait()
    try:
        store = Store.open(path, spec, META)
        store.write_row(os.getpid() % 4, {"x": np.ones(3, np.float32)})
        queue.put("ok")
    except Exception as exc:  # reported to the test
        queue.put(repr(exc))


def test_workers_starting_together_create_one_store(tmp_path):
    """Eight processes open a fresh store at the same instant, 15 times: one creates it, all use it."""
    ctx = mp.get_context("fork")
    _, spec = make(tmp_path / "warm")
    for trial in range(15):
        path = tmp_path / f"t{trial}" / "s"
        barrier, queue = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_create_at_once, args=(path, barrier, spec, queue)) for _ in range(8)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == ["ok"] * 8
        assert sorted(p.name for p in path.parent.iterdir()) == ["s"]  # no temporary folder left
        assert Store.open(path, spec, META).done() >= 1


def test_subset_masks_are_exact_and_seeded():
    a = subset_mask(0, 5, 100, 0.7)
    assert a.sum() == 70
    np.testing.assert_array_equal(a, subset_mask(0, 5, 100, 0.7))
    assert not np.array_equal(a, subset_mask(0, 6, 100, 0.7))
    assert not np.array_equal(a, subset_mask(1, 5, 100, 0.7))


def test_tampered_mask_in_finished_row_is_caught(smoke, digits):
    store = open_subset_store(smoke, digits)
    mask = subset_mask(smoke.seed, 0, digits.n_train, smoke.subset_ratio)
    store.write_row(0, {"masks": ~mask})
    with pytest.raises(StoreError, match="mask that their seed does not give: rows 0"):
        open_subset_store(smoke, digits)


def test_every_finished_mask_is_checked_against_its_design(smoke, digits):
    """A mask flipped in a late row, with its checksum rewritten to match, is still caught (not just row < 64)."""
    cfg = smoke.replace(num_models=120, min_out=10)
    store = open_subset_store(cfg, digits)
    design = subset_masks(cfg, digits.n_train)
    rows = {r: {"masks": design[r]} for r in range(cfg.num_models)}
    rows[100] = {"masks": ~design[100]}
    store.write_rows(rows)  # a writer that wrote the wrong mask: its checksum agrees with it
    with pytest.raises(StoreError, match=r"rows 100\b.*python -m memlib repair smoke"):
        open_subset_store(cfg, digits, create=False)
    assert memlib.runs.subsets.repair_subset_store(cfg, digits) == [100]
    assert open_subset_store(cfg, digits).pending() == [100]


def test_store_remembers_its_config(smoke, digits):
    store = open_subset_store(smoke, digits)
    doc = json.loads((store.path / "spec.json").read_text())
    assert doc["meta"]["config"]["num_models"] == smoke.num_models
    assert doc["spec"]["masks"]["shape"] == [smoke.num_models, digits.n_train]
    assert subset_masks(smoke, digits.n_train).shape == (smoke.num_models, digits.n_train)
    # fields that do not change the models (workers, thresholds) leave the store usable
    open_subset_store(smoke.replace(workers=2, infl_threshold=0.3), digits)
    with pytest.raises(StoreError, match="epochs"):
        open_subset_store(smoke.replace(epochs=4), digits)


def test_train_subsets_fills_every_row_and_fits_subsets(smoke, digits):
    store = memlib.train_subsets(smoke, digits)
    assert store.done() == smoke.num_models
    masks = np.asarray(store["masks"])
    np.testing.assert_array_equal(masks, subset_masks(smoke, digits.n_train))
    probs = np.asarray(store["train_prob"], dtype=np.float32)
    assert ((probs >= 0) & (probs <= 1)).all()
    # correctness agrees with the true-label probability (a right answer gives the true label the most mass)
    right = np.asarray(store["train_correct"])
    assert probs[right].mean() > probs[~right].mean()
    assert np.asarray(store["test_correct"]).mean() > 0.5


def test_balanced_design_puts_every_example_in_the_same_number_of_runs(smoke, digits):
    cfg = smoke.replace(mask_design="balanced", num_models=20, min_out=6)
    masks = subset_masks(cfg, digits.n_train)
    np.testing.assert_array_equal(masks.sum(0), 14)  # round(0.7 * 20) runs per example
    assert abs(masks.sum(1).mean() - 0.7 * digits.n_train) < 1
    store = memlib.train_subsets(cfg, digits)  # the runs train on the design's masks
    np.testing.assert_array_equal(np.asarray(store["masks"]), masks)
    assert not np.array_equal(masks, subset_masks(cfg.replace(mask_design="random"), digits.n_train))


@pytest.mark.parametrize("version", [None, 0, FORMAT + 1])
def test_a_store_of_another_format_is_refused_by_every_reader(tmp_path, version):
    """One refusal (FormatError, with what to do) for any spec.json format but FORMAT, from open, repair and the
    meta readers alike; nothing is upgraded or rewritten (fault: a reader that skips the format, or an upgrade)."""
    store, spec = full(tmp_path)
    doc = json.loads((store.path / "spec.json").read_text())
    assert doc["format"] == FORMAT
    if version is None:
        del doc["format"]
    else:
        doc["format"] = version
    (store.path / "spec.json").write_text(json.dumps(doc))
    del store
    before = snapshot(tmp_path)
    readers = [
        lambda: Store.open(tmp_path / "s", spec, META),
        lambda: Store.open(tmp_path / "s", spec, META, create=False),
        lambda: Store.repair(tmp_path / "s"),
        lambda: Store.repair(tmp_path / "s", spec, META),
        lambda: memlib.runs.subsets.stored_meta(tmp_path / "s", rebuilt_by="smoke"),
        lambda: memlib.runs.slurm.open_store(tmp_path / "s"),
    ]
    for read in readers:
        with pytest.raises(FormatError, match=f"reads format {FORMAT} only. Nothing was changed. Move .* away"):
            read()
    assert snapshot(tmp_path) == before


def test_a_stage_one_run_in_chunks_verifies_each_finished_row_once(smoke, digits, monkeypatch):
    """A process that trains the store chunk by chunk (train_subsets with `store`) hashes each row once: when it
    writes it, or, for a row another process finished meanwhile, when it next picks the store up (and a bad one
    is still caught). Fault caught: every chunk reopening the store and hashing every finished row again (the
    recipe at 2,000 models rehashed about 19 GB over its chunks)."""
    cfg = smoke.replace(num_models=16, group_size=4, min_out=2, mask_design="balanced", workers=1)
    hashed: Counter = Counter()
    real = memlib.runs.store.row_checksum

    def counting(key, name, row, values):
        hashed[row] += 1
        return real(key, name, row, values)

    monkeypatch.setattr(memlib.runs.store, "row_checksum", counting)
    store = None
    for start in (0, 4):
        store = memlib.train_subsets(cfg, digits, rows=range(start, start + 4), store=store)
    arrays = len(memlib.runs.store.data_names(store.arrays))
    assert hashed == Counter({r: arrays for r in range(8)}), hashed  # each once, as it was written
    other = memlib.train_subsets(cfg, digits, rows=range(8, 12))  # another process: it verifies rows 0-7 once
    store = memlib.train_subsets(cfg, digits, rows=range(12, 16), store=store)  # ours verifies 8-11 once
    assert store.done() == 16 and other is not store
    assert hashed == Counter({r: 2 * arrays for r in range(12)} | {r: arrays for r in range(12, 16)}), hashed
    memlib.train_subsets(cfg, digits, rows=range(16), store=store)  # nothing new: nothing hashed
    assert sum(hashed.values()) == 12 * 2 * arrays + 4 * arrays
    other.reload()  # rows 12-15 are new to `other`: a changed one is caught when it picks the store up
    other.arrays["train_prob"][13, 0] += 1
    with pytest.raises(StoreError, match=r"rows 13 \(arrays: train_prob\)"):
        memlib.train_subsets(cfg, digits, rows=range(16), store=other)
