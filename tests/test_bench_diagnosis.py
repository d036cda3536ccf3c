"""What `make bench`'s report and console say: the answer per storage and access pattern (AU
pass mark, what limits the loader), and the figures marked n/a, from rows of results.csv made
up here (no run, no timing)."""

from __future__ import annotations

from types import SimpleNamespace

from bench.loading import diagnosis
from bench.loading.diagnosis import (
    CLIENT_CPU,
    DECODING,
    STORAGE,
    UNDETERMINED,
    answers,
    cpu_split,
    limit,
)
from bench.loading.report import console, markdown, table, table_notes
from bench.resources import CpuUse

NAN = float("nan")


def result_row(**row):
    """A measured row of results.csv: a warm read pass of 2 workers, 100 samples of 20 kB in
    1 s, readers 20 % of their time in storage requests, a raw baseline of 100 MB/s timed
    over 0.5 s."""
    base = dict(
        mode="read", client_lib="boto3", cache="warm", workers=2, ranks=1, samples=100,
        bytes_read=2_000_000, samples_per_s=100.0, throughput_mbps=2.0, wall_s=1.0, read_s=0.4,
        read_mbps=5.0, au=0.0, au_min=0.0, data_wait_share=0.5, cpu_ms_per_mb=10.0,
        ratio_to_baseline=0.02, baseline_mbps=100.0, baseline_objects_per_s=NAN,
        baseline_s=0.5, ratio_to_peer=NAN,
    )  # fmt: skip
    row = {**base, **row}
    row.setdefault("pass", 0 if row["cache"].startswith("cold") else 1)
    lib = "" if row["storage"] == "fs" else f"/{row['client_lib']}"
    row["config"] = f"{row['storage']}{lib}/{row['access']}/{row['mode']}/w{row['workers']}"
    return row


def fs(**row):
    return result_row(storage="fs", client_lib="-", access=row.pop("access", "shards"), **row)


def emulate(au, cache="warm", **row):
    return fs(mode="emulate", au=au, au_min=au, cache=cache, data_wait_share=1 - au, **row)


def test_the_answer_says_whether_the_emulated_accelerator_is_kept_at_the_au_pass_mark():
    (kept,) = answers([emulate(0.95, "cold"), emulate(0.96), fs()], decode=True)
    assert kept.label == "fs, shards, 2 workers" and kept.au_met is True
    assert kept.sentences[0] == (
        "Keeps the emulated accelerator busy: AU 0.95 cold, 0.96 warm, at or above MLPerf"
        " Storage's pass mark of 0.90."
    )
    (starved,) = answers([emulate(0.5, "cold"), emulate(0.6)], decode=True)
    assert starved.au_met is False
    assert starved.sentences[0] == (
        "Does not keep the emulated accelerator busy: AU 0.50 cold, 0.60 warm, below MLPerf"
        " Storage's pass mark of 0.90; it waited for data 40% of the time."
    )
    (warm_only,) = answers([emulate(0.8, "cold"), emulate(0.92)], decode=True)
    assert warm_only.au_met is False
    assert warm_only.sentences[0].startswith("Keeps the emulated accelerator busy warm only:")
    (read_only,) = answers([fs()], decode=False)
    assert read_only.au_met is None and "no emulate" in read_only.sentences[0]
    # the pass mark is MLPerf Storage's, named once
    assert diagnosis.AU_THRESHOLD == 0.90


def test_the_answer_gives_samples_mbps_and_the_share_of_the_raw_baseline():
    cold = fs(cache="cold (each file evicted before it is read)", ratio_to_baseline=0.5)
    warm = fs(samples_per_s=150.0, throughput_mbps=3.0, ratio_to_baseline=0.006,
              baseline_mbps=500.0)  # fmt: skip
    (answer,) = answers([cold, warm], decode=True)
    assert (
        "Read alone (read mode): 100 samples/s, 2.00 MB/s cold (50% of the raw baseline's 100"
        " MB/s) and 150 samples/s, 3.00 MB/s warm (0.6% of the raw baseline's 500 MB/s)."
    ) in answer.sentences
    (faster,) = answers([fs(ratio_to_baseline=1.2)], decode=True)
    assert "(1.20x the raw baseline's 100 MB/s)" in " ".join(faster.sentences)
    (none,) = answers([fs(baseline_mbps=NAN, ratio_to_baseline=NAN)], decode=True)
    assert "; no raw baseline measured." in " ".join(none.sentences)


def test_a_baseline_of_a_few_milliseconds_is_no_ceiling_and_marked_na():
    short = [fs(cache="cold", baseline_s=0.004, baseline_mbps=200.0), fs(baseline_s=0.001)]
    (answer,) = answers(short, decode=True)
    text = " ".join(answer.sentences)
    assert (
        "The raw baseline is n/a: it read the same 0.8 MB in 1.0 ms to 4.0 ms, under the 100 ms"
        in (text)
    )
    assert "of the raw baseline's" not in text
    lines = table(short).splitlines()
    assert all(line.split()[-2] == "n/a" for line in lines[2:])  # x base
    assert any(note.startswith("x base n/a: the raw baseline read for under 100 ms")
               for note in table_notes(short))  # fmt: skip
    assert diagnosis.MIN_BASELINE_S == 0.1
    # results written before baseline_s was a column keep their ratio
    older = fs(baseline_s=NAN)
    assert (
        diagnosis.baseline_measured(older) and table([older]).splitlines()[2].split()[-2] == "0.02"
    )


def test_au_of_read_rows_and_cpu_per_mb_of_train_rows_are_marked_na():
    rows = [fs(), fs(mode="train", au=0.99, au_min=0.99, cpu_ms_per_mb=60_000.0), emulate(0.95)]
    read, train, emul = (line.split() for line in table(rows).splitlines()[2:])
    assert read[5:7] == ["n/a", "n/a"] and read[8] == "10.0"  # AU, AUmin; CPU/MB
    assert train[5:7] == ["0.99", "0.99"] and train[8] == "n/a"
    assert emul[5:7] == ["0.95", "0.95"] and emul[8] == "10.0"
    assert [read[-2], train[-2], emul[-2]] == ["0.02", "n/a", "n/a"]  # x base: read rows only
    notes = table_notes(rows)
    assert notes[0].startswith("AU, AUmin n/a: read rows have no compute")
    assert notes[1].startswith("CPU/MB n/a: in train rows the model's")
    assert notes[2].startswith("x base n/a in emulate and train rows")
    assert len(table_notes([fs()])) == 1  # AU only: a read row keeps its ratio to the baseline


def test_limited_by_storage_requests_when_readers_wait_in_them():
    waiting = result_row(access="random", storage="s3", workers=0, read_s=0.8, read_mbps=250.0)
    lim = limit(waiting, decode=False, cores=4)
    assert lim.kind == STORAGE
    assert lim.text.startswith(
        "limited by storage requests: its 1 reader spent 80% of the pass waiting in them, at 250"
        " MB/s each while reading (250 MB/s together); the raw baseline read 100 MB/s."
    )
    assert "served them as fast as the baseline" in lim.text
    few = limit(fs(read_s=1.6, read_mbps=20.0), decode=False, cores=4)
    assert few.kind == STORAGE and "(40.0 MB/s together)" in few.text
    assert "Fewer requests in flight than the baseline's" in few.text
    many = limit(fs(access="objects", read_s=6.0, read_mbps=2.0), decode=True, cores=4)
    assert many.kind == STORAGE and "kept 3.0 requests in flight per reader" in many.text


def test_limited_by_the_client_cpu_not_the_storage_on_warm_page_cache_reads():
    cpu = dict(host_busy_cores=1.7, host_steal_cores=0.2, host_cpu_ms_per_mb=11.0,
               cpu_ms_per_mb=7.5, baseline_host_busy_cores=1.7, baseline_host_cpu_ms_per_mb=8.8,
               baseline_cpu_ms_per_mb=5.4, ratio_to_baseline=0.8)  # fmt: skip
    lim = limit(fs(**cpu), decode=False, cores=2)
    assert lim.kind == CLIENT_CPU
    assert lim.text.startswith(
        "limited by the client's CPU, not by the storage: its readers spent 20% of their time in"
        " storage requests and the rest on per-sample work: a 20.0 kB sample every 10.0 ms (tar"
        " parsing, sample dicts, batching); the machine's 2 cores were saturated (1.90 busy or"
        " stolen); warm, the files come from the page cache. CPU counters: 0.80x the raw"
        " baseline = 1.00 (cores busy"
    )
    assert lim.text.endswith(
        "it needs 1.25x the raw read's CPU for the same bytes; the machine's 2 cores were"
        " saturated (busy or stolen), so it cannot go faster here without less CPU per sample"
        " or more cores."
    )
    no_base = limit(fs(**{**cpu, "baseline_s": 0.005}), decode=False, cores=2)
    assert no_base.kind == CLIENT_CPU and no_base.text.endswith(
        "warm, the files come from the page cache. CPU counters: 1.70 of the machine's 2 cores"
        " busy; 0.20 more taken by the hypervisor; 11.0 ms of CPU per MB machine-wide, 7.5 of"
        " them the loader's processes (no raw baseline measured to split against)."
    )
    shared = limit(result_row(access="shards", storage="s3", **{**cpu, "cpu_ms_per_mb": 4.0}),
                   decode=False, cores=2)  # fmt: skip
    assert shared.kind == CLIENT_CPU and shared.text.startswith(
        "limited by this machine's CPU, which the loader shares with other processes (its own"
        " 4.0 of the 11.0 ms of CPU per MB machine-wide; the rest is other processes on this"
        " machine, a local S3 server among them when the run started one), not by the storage's"
        " reads: "
    )
    cold = limit(fs(cache="cold (each file evicted before it is read)", **cpu), False, cores=8)
    assert cold.kind == CLIENT_CPU and "page cache" not in cold.text
    # saturated cores come first: requests that were in flight long waited for them too
    busy = limit(fs(read_s=1.8, **cpu), decode=False, cores=2)
    assert busy.kind == CLIENT_CPU and "cores were saturated (1.90 busy or stolen) by" in busy.text


def test_limited_by_decoding_when_the_run_decodes():
    lim = limit(fs(access="random"), decode=True, cores=4)
    assert lim.kind == DECODING
    assert lim.text == (
        "limited by decoding on the client's CPU, not by the storage: its readers spent 20% of"
        " their time in storage requests and the rest on per-sample work: a 20.0 kB sample every"
        " 10.0 ms (JPEG decoding, transforms, batching). `--set bench.decode=false` measures the"
        " read path alone."
    )
    (answer,) = answers([fs(cache="cold"), fs()], decode=True)
    assert answer.limits["cold"].kind == answer.limits["warm"].kind == DECODING
    assert answer.sentences[-1].startswith("Cold and warm alike; warm: limited by decoding")


def test_a_pass_too_short_is_not_judged():
    short = limit(fs(wall_s=0.05, read_s=0.09), decode=False, cores=2)
    assert short.kind == UNDETERMINED
    assert "the pass read 2.0 MB in 50 ms" in short.text and "start-up" in short.text
    (answer,) = answers([fs(cache="cold", wall_s=0.05), fs()], decode=True)
    assert answer.sentences[-2].startswith("Cold: too short to tell")
    assert answer.sentences[-1].startswith("Warm: limited by decoding")


def test_cpu_split_leaves_out_figures_that_are_not_measurements():
    cpu = dict(host_busy_cores=0.85, host_cpu_ms_per_mb=8.8, cpu_ms_per_mb=7.5,
               baseline_host_busy_cores=1.7, baseline_host_cpu_ms_per_mb=8.8,
               baseline_cpu_ms_per_mb=5.4, ratio_to_baseline=0.5)  # fmt: skip
    waited = cpu_split(fs(**cpu), cores=2)
    assert "0.50x the raw baseline = 0.50 (cores busy" in waited and "x 1.00 (CPU per MB" in waited
    assert waited.endswith("its readers waited (on storage requests, or for each other) more"
                           " than the baseline's")  # fmt: skip
    own = (
        ". CPU counters: 0.85 of the machine's 2 cores busy; 8.8 ms of CPU per MB machine-wide,"
        " 7.5 of them the loader's processes (no raw baseline measured to split against)"
    )
    assert cpu_split(fs(**{**cpu, "baseline_host_busy_cores": 7.8}), cores=2) == own  # > 2 cores
    assert cpu_split(fs(baseline_s=0.002, **cpu), cores=2) == own  # too short a baseline
    assert cpu_split(fs(**{**cpu, "host_busy_cores": 2.5}), cores=2) == ""  # > 2 cores
    assert cpu_split(fs(ranks=2, **cpu), cores=2) == ""  # machine-wide over several machines
    assert cpu_split(fs(), cores=2) == ""  # no CPU figures (older results)
    assert not diagnosis.cores_possible(7.8, 2) and diagnosis.cores_possible(1.9, 2)
    assert diagnosis.cores_possible(2.01, 2)  # a full machine, give or take the counters' error


def test_no_development_goal_is_a_verdict():
    rows = [
        fs(ratio_to_baseline=0.25),
        result_row(access="objects", storage="s3", ratio_to_peer=0.6),
        result_row(access="random", storage="s3", baseline_objects_per_s=800.0),
    ]
    text = console(config(decode=False), rows, cores=2)
    for verdict in ("goal", "NOT met", "slower", "met:"):
        assert verdict not in text, verdict
    assert "0.25" in text  # the ratio to the baseline stays in the table


def test_failed_configuration_is_said_in_its_answer():
    failed = {"config": "s3/boto3/shards/read/w2", "mode": "read", "access": "shards",
              "storage": "s3", "client_lib": "boto3", "workers": 2, "ranks": 1, "pass": 0,
              "cache": "-", "error": "s3://nowhere: endpoint unreachable"}  # fmt: skip
    ok, broken = answers([fs(), failed], decode=True)
    assert broken.label == "s3 (boto3), shards, 2 workers" and broken.au_met is None
    assert broken.sentences == ["Its read pass 0 failed: s3://nowhere: endpoint unreachable."]


def config(decode=True):
    return {
        "bench": dict(decode=decode, computation_time_s=0.2, warmup_steps=2, steps=12,
                      read_steps=500, passes=2, ranks=[1], peers=False),
        "loader": {"batch_size": 4},
        "storage": {"root": "data"},
        "dataset": {"train_split": "train", "limit": None},
    }  # fmt: skip


def test_report_and_console_lead_with_the_answer():
    rows = [emulate(0.95, "cold"), emulate(0.96), fs(cache="cold"), fs()]
    short = SimpleNamespace(
        name="fs-read", threads=1, objects=40, bytes=800_000, seconds=0.001, mbps=800.0,
        objects_per_s=40_000.0, cpu=CpuUse(0.001, 0.0, 0.0078),
    )  # fmt: skip
    busy = SimpleNamespace(
        **{**vars(short), "seconds": 0.5, "objects_per_s": 80.0, "cpu": CpuUse(0.5, 0.05, 4.0)}
    )
    baselines = [("fs/shards/read/w2", 0, short), ("fs/shards/read/w2", 1, busy)]
    report = markdown(config(), rows, {"baselines": baselines}, cores=2)
    top = report.split("## Results")[0]
    assert top.startswith("# Storage benchmark report\n\n## Answer\n\nThe emulated accelerator")
    assert "at least 0.90" in top
    assert "- **fs, shards, 2 workers**: Keeps the emulated accelerator busy: AU 0.95 cold" in top
    assert (
        "| fs/shards/read/w2 | 0 | fs-read (1 thread) | 40 | 0.8 | 0.001 | n/a | n/a | n/a | n/a |"
        in (report)
    )
    assert "| 8.00 | 62.5 / 5000.0 |" not in report  # 8 busy cores of 2 is not a measurement
    assert "| 1 | fs-read (1 thread) | 40 | 0.8 | 0.500 | 80.0 | 800.00 | n/a |" in report
    assert "- busy cores n/a: more than the machine's 2 cores" in report
    out = console(config(), rows, cores=2)
    assert out.startswith("The emulated accelerator computes for 0.2 s per step of 4 samples")
    assert out.index("fs, shards, 2 workers: Keeps") < out.index("configuration ")
    assert all(len(line) <= 100 for line in out.split("configuration ")[0].splitlines())
