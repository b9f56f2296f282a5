"""compare(): plan the runs, train and evaluate them (in dependency order, `jobs` at a time),
then decide with paired statistics and write the report."""

from __future__ import annotations

import dataclasses
import os
import time

from nanoGPT.atomic import atomic_write_json
from nanoGPT.checkpoint import checkpoint_path
from nanoGPT.compare.config import CompareConfig
from nanoGPT.compare.document import ReportContext, draw_figures, write_report, write_samples_markdown
from nanoGPT.compare.final_eval import EvalSettings, evaluate_run
from nanoGPT.compare.plan import Run, parse_rows, plan_runs, teacher_run
from nanoGPT.compare.probes import probe_section
from nanoGPT.compare.report import format_difference, format_table, format_verdicts, summarize, verdicts
from nanoGPT.compare.runs import build_run_cache, ensure_data, stage, train_or_reuse, training_seconds
from nanoGPT.compare.schedule import Task, run_tasks
from nanoGPT.compare.trunks import describe, trunk_section
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.runtime import describe_machine
from nanoGPT.stats import WindowTable, paired_differences, significantly_best


def eval_settings(cfg: CompareConfig) -> EvalSettings:
    return EvalSettings(
        cfg.final_eval_iters, cfg.block_size, cfg.batch_size, tuple(cfg.prompts.split("|")),
        cfg.num_samples, cfg.sample_tokens, cfg.temperature, cfg.top_k, cfg.sample_seed, cfg.probe_examples,
    )  # fmt: skip


def build_tasks(teacher: Run | None, runs: list[Run], settings: EvalSettings) -> list[Task]:
    """Teacher first (the longest task, on the critical path), then the caches it feeds and the
    runs that read them, then the other runs (which need no teacher: they train beside it),
    then the evaluations (judged by the teacher, or by the reference row's first run when there
    is no teacher to train)."""
    judge = teacher or runs[0]
    judge_path = checkpoint_path(judge.cfg.out_dir)
    tasks = [Task(f"train:{teacher.name}", train_or_reuse, (teacher,))] if teacher else []
    after_teacher = (f"train:{teacher.name}",) if teacher else ()
    caches = {}
    for run in runs:
        if run.cfg.augment and run.cfg.augment_source == "cache":
            caches.setdefault(run.cfg.augment_cache, run)
    tasks += [Task(f"cache:{name}", build_run_cache, (run,), after_teacher) for name, run in caches.items()]
    augmented = [r for r in runs if r.cfg.augment]
    for run in augmented + [r for r in runs if not r.cfg.augment]:
        cache = (f"cache:{run.cfg.augment_cache}",) if run.cfg.augment_cache in caches else ()
        after = after_teacher + cache if run.cfg.augment else ()
        tasks.append(Task(f"train:{run.name}", train_or_reuse, (run,), after))
    for run in ([teacher] if teacher else []) + runs:
        after = tuple(dict.fromkeys((f"train:{run.name}", f"train:{judge.name}")))
        tasks.append(Task(f"eval:{run.name}", evaluate_run, (run, settings, judge_path), after))
    return tasks


def teacher_gap(
    teacher: Run, teacher_result: dict, reference: str, tables: dict, cfg: CompareConfig
) -> tuple:
    """The teacher's held-out NLL against the reference row's (paired by window; the teacher's
    one run stands beside each seed): the text for the report and its numbers."""
    reference_table = tables[reference]
    teacher_table = WindowTable.from_runs({teacher.seed: teacher_result["windows"]}).broadcast(
        reference_table.seeds
    )
    diff = paired_differences(teacher_table, reference_table, cfg.bootstrap_replicates, cfg.bootstrap_seed)[
        "nll"
    ]
    text = (
        f"**Teacher vs students:** the teacher's held-out NLL is {diff.row:.4f} against {diff.reference:.4f} "
        f"for `{reference}` (teacher − {reference}: {format_difference(diff)}); acc "
        f"{teacher_result['metrics']['acc']:.4f}, ECE {teacher_result['metrics']['ece']:.4f}."
    )
    return text, dataclasses.asdict(diff)


def decide(cfg: CompareConfig, runs: list[Run], results: dict[str, dict[int, dict]]) -> dict:
    """Per-row summary, the significantly best row of each metric, paired verdicts."""
    tables = {
        label: WindowTable.from_runs({seed: r["windows"] for seed, r in seeds.items()})
        for label, seeds in results.items()
    }
    variants = {run.label: run.variant for run in runs}
    return {
        "tables": tables,
        "summary": summarize(
            {label: {s: r["metrics"] for s, r in seeds.items()} for label, seeds in results.items()}
        ),
        "best": significantly_best(tables, cfg.bootstrap_replicates, cfg.bootstrap_seed),
        "verdicts": verdicts(tables, variants, cfg.bootstrap_replicates, cfg.bootstrap_seed),
    }


def compare(cfg: CompareConfig, command: str = "") -> dict:
    """Run the whole comparison; returns what results.json holds."""
    if int(os.environ.get("RANK", -1)) != -1:
        raise UserError(
            "compare.py runs as one process: train the runs with torchrun train_<variant>.py into "
            "<out_dir>/<row>-seed<seed>, then compare.py reuses those checkpoints"
        )
    started = time.time()
    data_dir = ensure_data(cfg)
    rows, skipped = parse_rows(cfg.rows)
    for label in skipped:
        stage(f"skipping row {label}: its variant is not registered")
    teacher = teacher_run(cfg, data_dir)
    runs = plan_runs(cfg, data_dir, rows, teacher)
    settings = eval_settings(cfg)
    tasks = build_tasks(teacher, runs, settings)
    and_teacher = " + a teacher" if teacher else ""
    stage(f"{len(runs)} runs ({len(rows)} rows x seeds){and_teacher}, {cfg.jobs} at a time")
    done = run_tasks(tasks, cfg.jobs)
    every = ([teacher] if teacher else []) + runs
    statuses = {r.name: done[f"train:{r.name}"] for r in every}
    results: dict[str, dict[int, dict]] = {}
    for run in runs:
        results.setdefault(run.label, {})[run.seed] = done[f"eval:{run.name}"]
    decision = decide(cfg, runs, results)
    context = ReportContext(
        command, cfg, runs, teacher, statuses, {r.name: training_seconds(r) for r in every},
        results[rows[0].label][runs[0].seed]["split"], results[rows[0].label][runs[0].seed]["checkpoint"],
        results[rows[0].label][runs[0].seed]["metrics"]["tokens"],
        TokenData(data_dir, cfg.block_size, 1, "cpu", train_fraction=cfg.train_fraction).train_tokens,
        skipped, 0.0,
    )  # fmt: skip
    return write_outputs(cfg, context, results, decision, done, started)


def write_outputs(
    cfg: CompareConfig, ctx: ReportContext, results: dict, decision: dict, done: dict, started
) -> dict:
    report_dir = os.path.join(cfg.log_dir, cfg.name)
    os.makedirs(report_dir, exist_ok=True)
    stage(f"writing the report to {report_dir}")
    shown = dict(decision["summary"])
    gap, gap_numbers = "", None
    if ctx.teacher is not None:  # a last line of the table, never bold: best names rows only
        teacher_result = done[f"eval:{ctx.teacher.name}"]
        gap, gap_numbers = teacher_gap(
            ctx.teacher, teacher_result, ctx.runs[0].label, decision["tables"], cfg
        )
        shown.update(summarize({"teacher (not a contestant)": {ctx.teacher.seed: teacher_result["metrics"]}}))
    # rows that differ in their trunk get a second table: what each trunk is and costs
    table = format_table(shown, decision["best"]) + trunk_section(ctx.runs, decision["summary"], ctx.split)
    probes, probe_floor = probe_section(cfg, ctx.runs[0], shown)  # each row's probes beside the floor
    table += probes
    figures = draw_figures(report_dir, ctx.runs, results, cfg)
    write_samples_markdown(os.path.join(report_dir, "samples.md"), results)
    ctx.wall_s = time.time() - started
    ctx.machine = describe_machine(cfg.device)
    output = {
        "command": ctx.command,
        "config": dataclasses.asdict(cfg),
        "wall_s": ctx.wall_s,
        "machine": ctx.machine,
        "statuses": dict(ctx.statuses),
        "train_s": dict(ctx.train_s),
        "summary": decision["summary"],
        "best": decision["best"],
        "teacher_gap": gap_numbers,
        "verdicts": {
            label: {
                other: {m: dataclasses.asdict(d) for m, d in diffs.items()}
                for other, diffs in against.items()
            }
            for label, against in decision["verdicts"].items()
        },
        "skipped_rows": list(ctx.skipped),
        "probe_floor": probe_floor,
        "trunks": {run.label: describe(run.cfg) for run in ctx.runs},
        "runs": {
            label: {str(s): {k: v for k, v in r.items() if k != "windows"} for s, r in seeds.items()}
            for label, seeds in results.items()
        },
    }
    atomic_write_json(os.path.join(report_dir, "results.json"), output)
    verdict_table = format_verdicts(decision["verdicts"])
    write_report(
        os.path.join(report_dir, "report.md"), ctx, table, gap, verdict_table, decision["summary"], figures
    )
    print(f"\n{table}\n\n{gap}\n\n{verdict_table}")
    print(f"\n{os.path.join(report_dir, 'report.md')} ({ctx.wall_s / 60:.1f} min)")
    return output
