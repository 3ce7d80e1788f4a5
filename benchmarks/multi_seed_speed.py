"""
Throughput of many seeds in one process: ``learn_offline_together`` (one vmapped update of K learners per step,
``sb3_iql/iql/multi_seed.py``) against K separate ``learn_offline`` runs of the same models, one after the other.

Reported per configuration (K learners, hidden widths): updates/s per learner of both, and their ratio, from wall
time and from the process CPU time (steadier when other processes share the cores). The two are timed in
alternation, round by round, so that the ratio holds on a loaded machine; the median round counts.

With ``--sweep``, also a sweep together: learners with their own learning rate, tau, expectile and beta (their own
Adam call each, ``learn_offline_together``'s cost of a grid), against the same learners with shared values.

Usage::

    python benchmarks/multi_seed_speed.py --updates 50 --rounds 3 --learners 1 2 4 8 --widths 64 256 --threads 1 --compiled \
        --sweep --output-dir benchmarks/results   # also a section of speed.md
"""

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch as th
from hardware import cpu_model  # benchmarks/hardware.py

from sb3_iql import IQL
from sb3_iql.common.synthetic import box_env, synthetic_transitions
from sb3_iql.iql.multi_seed import learn_offline_together

#: AntMaze's shape (observation dim, action dim), batch size of the paper.
OBS_DIM, ACTION_DIM, BATCH_SIZE = 29, 8, 256
N_TRANSITIONS = 100_000


def sweep_values(seed: int) -> dict[str, float]:
    """:return: learner ``seed``'s own hyperparameters in a sweep (each differs from every other learner's)"""
    return {
        "learning_rate": 3e-4 * (1 + seed / 10),
        "tau": 0.005 * (1 + seed / 10),
        "expectile": 0.7 + 0.025 * (seed % 8),  # below 1 for any K
        "beta": 3.0 + seed,
    }


def make_models(n_learners: int, width: int, device: str, compile_update: bool = False, sweep: bool = False) -> list[IQL]:
    """:return: ``n_learners`` models (seeds 0..K-1) on the same synthetic data, ``width x width`` networks; with
    ``sweep``, each with its own ``sweep_values``"""
    data = synthetic_transitions(OBS_DIM, ACTION_DIM, N_TRANSITIONS, seed=0)
    models = []
    for seed in range(n_learners):
        model = IQL(
            "MlpPolicy",
            box_env(OBS_DIM, ACTION_DIM),
            buffer_size=N_TRANSITIONS,
            batch_size=BATCH_SIZE,
            policy_kwargs={"net_arch": [width, width]},
            compile_update=compile_update,
            seed=seed,
            device=device,
            **(sweep_values(seed) if sweep else {}),
        )
        model.replay_buffer.extend(
            data.observations, data.next_observations, data.actions, data.rewards, data.dones, data.timeouts
        )
        models.append(model)
    return models


def timed(function: Callable[[], object], device: str) -> tuple[float, float]:
    """:return: wall and process CPU seconds of ``function()``"""
    if device == "cuda":
        th.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    if device == "cuda":
        th.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def contenders(
    n_learners: int, width: int, device: str, compiled: bool, sweep: bool = False, only_compiled_graph: bool = False
) -> dict[str, Callable[[int], object]]:
    """
    :return: name -> ``run(n_updates)``, warmed up: ``together`` and ``separate`` (eager), on CUDA ``graph``
        (together in a CUDA graph, its capture timed with each call); with ``compiled``, on CPU
        ``together_compiled`` and ``separate_compiled`` (``compile_update=True``: the compilation in the warm-up),
        on CUDA ``graph_compiled`` (the compiled update in the graph: the fastest path of one seed and of K) alone,
        with ``only_compiled_graph``; with ``sweep``, ``sweep`` (together, eager, each learner with its own
        ``sweep_values``), on CUDA ``graph_sweep`` (the same in a CUDA graph)
    """
    runs: dict[str, Callable[[int], object]] = {}

    def together(compile_update: bool, sweep: bool = False) -> Callable[[int], object]:
        models = make_models(n_learners, width, device, sweep=sweep)
        learn_offline_together(models, 5, log_interval=0, compile_update=compile_update)  # warm-up
        return lambda n: learn_offline_together(
            models, n, log_interval=0, reset_num_timesteps=False, compile_update=compile_update
        )

    def separate(compile_update: bool) -> Callable[[int], object]:
        models = make_models(n_learners, width, device, compile_update)
        for model in models:
            model.learn_offline(5, log_interval=0)  # warm-up
        return lambda n: [model.learn_offline(n, log_interval=0, reset_num_timesteps=False) for model in models]

    def graphed(compile_update: bool, sweep: bool = False) -> Callable[[int], object]:
        models = make_models(n_learners, width, device, sweep=sweep)
        learn_offline_together(models, 5, log_interval=0, cuda_graph=True, compile_update=compile_update)  # warm-up
        return lambda n: learn_offline_together(
            models, n, log_interval=0, reset_num_timesteps=False, cuda_graph=True, compile_update=compile_update
        )

    if only_compiled_graph:  # built last by benchmark(): its compilation would hold back every other figure
        return {"graph_compiled": graphed(True)}
    runs["together"], runs["separate"] = together(False), separate(False)
    if device == "cuda":
        runs["graph"] = graphed(False)
    elif compiled:
        runs["together_compiled"], runs["separate_compiled"] = together(True), separate(True)
    if sweep:
        runs["sweep"] = together(False, sweep=True)
        if device == "cuda":
            runs["graph_sweep"] = graphed(False, sweep=True)
    return runs


def benchmark(
    n_learners: int,
    width: int,
    n_updates: int,
    n_rounds: int,
    device: str = "cpu",
    compiled: bool = False,
    sweep: bool = False,
    on_partial: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """
    :param on_partial: on CUDA with ``compiled``, called with the other contenders' figures before the compiled graph
        is built and timed (its rounds come after theirs)
    :return: learner-updates/s of each of ``contenders`` (wall and CPU time, median round), and the ratios together
        / separate (eager, and compiled with ``compiled``) and, with ``sweep``, sweep / together (CPU time)
    """
    result = rates(contenders(n_learners, width, device, compiled, sweep), n_learners, n_updates, n_rounds, device)
    if compiled and device == "cuda":  # timed after the others, which a stage's time limit then leaves saved
        if on_partial is not None:
            on_partial({**result, **ratios(result, sweep)})
        compiled_graph = contenders(n_learners, width, device, compiled, only_compiled_graph=True)
        result.update(rates(compiled_graph, n_learners, n_updates, n_rounds, device))
    return {**result, **ratios(result, sweep)}


def rates(
    runs: dict[str, Callable[[int], object]], n_learners: int, n_updates: int, n_rounds: int, device: str
) -> dict[str, float]:
    """:return: learner-updates/s of each run (wall and CPU time, median round), the runs taking turns in a round"""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(n_rounds):
        for name, run in runs.items():
            times[name].append(timed(lambda run=run: run(n_updates), device))
    result = {}
    for name, rounds in times.items():
        for clock, index in (("wall", 0), ("cpu", 1)):
            seconds = statistics.median(round_times[index] for round_times in rounds)
            result[f"{name}_{clock}"] = n_learners * n_updates / seconds  # learner-updates/s: updates/s per learner x K
    return result


def ratios(result: dict[str, float], sweep: bool) -> dict[str, float]:
    """:return: together / separate (wall and CPU; compiled where timed) and, with ``sweep``, sweep / together"""
    result = dict(result)
    for clock in ("wall", "cpu"):
        result[f"ratio_{clock}"] = result[f"together_{clock}"] / result[f"separate_{clock}"]
    if "together_compiled_cpu" in result:
        result["ratio_compiled_cpu"] = result["together_compiled_cpu"] / result["separate_compiled_cpu"]
    if sweep:
        result["ratio_sweep_cpu"] = result["sweep_cpu"] / result["together_cpu"]
    return {key: value for key, value in result.items() if key.startswith("ratio_")}


def extra_columns(rows: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
    """:return: the header and separator additions and the cells of the optional columns: the CUDA graph's, and the
    compiled runs' (empty where the rows lack them)"""
    header, separator, cells = "", "", ["" for _ in rows]
    for name, title in (
        ("graph", "together, CUDA graph"),
        ("graph_compiled", "together, compiled, CUDA graph"),
        ("graph_sweep", "sweep, CUDA graph"),
    ):
        if all(f"{name}_wall" in row for row in rows):
            header, separator = header + f" {title} (wall) |", separator + "---:|"
            cells = [cell + f" {row[f'{name}_wall']:.0f} |" for cell, row in zip(cells, rows)]
    if all("together_compiled_cpu" in row for row in rows):
        header += " together, compiled (CPU) | separate, compiled (CPU) | ratio, compiled (CPU) |"
        separator += "---:|---:|---:|"
        cells = [
            cell + f" {row['together_compiled_cpu']:.0f} | {row['separate_compiled_cpu']:.0f} | "
            f"{row['ratio_compiled_cpu']:.2f} |"
            for cell, row in zip(cells, rows)
        ]
    if all("sweep_cpu" in row for row in rows):
        header += " sweep (CPU) | sweep / together (CPU) |"
        separator += "---:|---:|"
        cells = [cell + f" {row['sweep_cpu']:.0f} | {row['ratio_sweep_cpu']:.2f} |" for cell, row in zip(cells, rows)]
    return header, separator, cells


def render(result: dict[str, Any], device_name: str) -> str:
    """:return: a markdown section of ``speed.md``"""
    lines = [
        f"## Many seeds in one process: {device_name}, {result['threads']} thread(s), torch {result['torch']}, "
        f"{result['date']}",
        "",
        f"`learn_offline_together` (K learners, one vmapped update per step) against K separate `learn_offline` runs, "
        f"timed in alternation (`benchmarks/multi_seed_speed.py`): batch {BATCH_SIZE}, AntMaze's shapes (obs "
        f"{OBS_DIM}, action {ACTION_DIM}), {result['updates']} updates x {result['rounds']} rounds, median round. "
        "Figures: learner-updates/s (K x updates/s of each learner). Separate: K eager runs. Compiled: on CPU "
        "`compile_update=True` together and separate; on CUDA together in a CUDA graph, timed after the other "
        "columns (compilation excluded; `learn_offline_together` runs its gradient functions once more per call, to "
        "check the compilation; one seed's fastest rate is `speed.py`'s compiled-cudagraph path, not the eager "
        "separate runs). A CUDA graph is captured again by each call, which the rounds count. Sweep: together, "
        "eager, each learner with its own learning rate, tau, expectile and beta (`sweep_values`).",
        "",
    ]
    header, separator, extra_cells = extra_columns(result["rows"])
    lines += [
        f"| width | K | together (wall) | separate (wall) | ratio (wall) | together (CPU) | separate (CPU) | ratio (CPU) |"
        f"{header}",
        f"|---|---:|---:|---:|---:|---:|---:|---:|{separator}",
    ]
    for r, extra_cell in zip(result["rows"], extra_cells):
        lines.append(
            f"| {r['width']}x{r['width']} | {r['learners']} | {r['together_wall']:.0f} | {r['separate_wall']:.0f} | "
            f"{r['ratio_wall']:.2f} | {r['together_cpu']:.0f} | {r['separate_cpu']:.0f} | {r['ratio_cpu']:.2f} |"
            f"{extra_cell}"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=50, help="updates per learner and round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (median reported)")
    parser.add_argument("--learners", type=int, nargs="+", default=[1, 2, 4, 8], help="values of K")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256], help="hidden widths (two layers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the compiled update: on CPU together and separate, on CUDA together in a CUDA graph (a "
        "compilation per width and K)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also time a sweep together: learners with their own learning rate, tau, expectile and beta (on CUDA "
        "also in a CUDA graph)",
    )
    parser.add_argument(
        "--output-dir", default=None, help="write multi_seed_<device>.json there and re-render its speed.md (speed.py)"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not th.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    th.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "threads": args.threads,
        "torch": th.__version__,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "updates": args.updates,
        "rounds": args.rounds,
        "rows": [],
        "device_name": (
            th.cuda.get_device_name() if args.device == "cuda" else f"{cpu_model()}, {os.cpu_count()} logical CPUs"
        ),
    }

    def save(rows: list[dict[str, Any]]) -> None:
        if args.output_dir is not None:
            import speed  # benchmarks/speed.py (which imports this module)

            speed.save_section(args.output_dir, "multi_seed", args.device, {**result, "rows": rows})

    for width in args.widths:
        for n_learners in args.learners:
            shape = {"width": width, "learners": n_learners}

            def save_partial(figures: dict[str, float], shape: dict[str, int] = shape) -> None:
                save([*result["rows"], {**shape, **figures}])

            figures = benchmark(
                n_learners, width, args.updates, args.rounds, args.device, args.compiled, args.sweep, save_partial
            )
            row = {**shape, **figures}
            result["rows"].append(row)
            print(
                f"{width}x{width}, K={n_learners}: {row['together_wall']:.0f} learner-updates/s together, "
                f"{row['separate_wall']:.0f} separate, ratio {row['ratio_wall']:.2f} (wall), {row['ratio_cpu']:.2f} (CPU)"
                + (f", {row['graph_wall']:.0f} together in a CUDA graph" if "graph_wall" in row else "")
                + (f", compiled ratio {row['ratio_compiled_cpu']:.2f} (CPU)" if "ratio_compiled_cpu" in row else "")
                + (f", {row['graph_compiled_wall']:.0f} compiled in a CUDA graph" if "graph_compiled_wall" in row else "")
                + (f", sweep / together {row['ratio_sweep_cpu']:.2f} (CPU)" if "ratio_sweep_cpu" in row else ""),
                flush=True,
            )
            save(result["rows"])  # after each row: a run stopped at its time limit keeps what it measured
    print(render(result, result["device_name"]))


if __name__ == "__main__":
    main()
