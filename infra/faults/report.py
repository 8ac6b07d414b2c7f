"""The drill's report as an operator reads it: one row per fault, then what each missed."""

from __future__ import annotations

from rich.table import Table

from infra.faults.drill import FaultResult


def _alerts(result: FaultResult) -> str:
    if not result.alerts:
        return "-"
    return ", ".join(("(before) " if a.before_fault else "") + f"{a.name} +{a.fired_at_s:.0f}s"
                     + (f"→{a.resolved_at_s:.0f}s" if a.resolved_at_s is not None else " (still firing)")
                     for a in result.alerts)


def results_table(results: list[FaultResult]) -> Table:
    table = Table(title="fault drill", title_justify="left")
    for column in ("component", "fault", "requests", "errors", "retried", "lost", "doubled", "healthy after",
                   "alerts (s after the fault)", "goals"):
        table.add_column(column)
    for r in results:
        retried = sum(r.retried.values())
        healthy = "never" if r.healthy_after_s is None else f"{r.healthy_after_s:.1f}s"
        goals = "[green]met[/green]" if r.passed else "[red]MISSED[/red]"
        table.add_row(r.component, r.fault + (f" {r.fault_s:.0f}s" if r.fault != "crash" else ""),
                      str(r.operations), str(r.client_errors), str(retried), str(r.runs_lost + r.states_lost),
                      str(r.runs_doubled + r.states_doubled), healthy, _alerts(r), goals)
    return table


def missed_lines(results: list[FaultResult]) -> list[str]:
    """Under the table: what each fault that missed a goal missed, and what its clients saw."""
    lines = []
    for r in results:
        if r.passed:
            continue
        lines.append(f"{r.fault} of {r.component}: {'; '.join(r.missed)}")
        lines += [f"    a client saw: {sample}" for sample in r.error_samples]
    return lines
