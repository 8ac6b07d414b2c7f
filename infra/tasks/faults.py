"""`invoke fault-drill`: hurt each component of the running stack under a Prefect client load and report what the
clients saw (docs/fault-drills.md)."""

from __future__ import annotations

import json

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from infra import console
from infra.faults.drill import DrillOptions, drill_stack, plan, run_fault
from infra.faults.report import missed_lines, results_table
from infra.tasks import reports_user_errors
from infra.tasks.stack import TARGET_HELP, _target


@task(iterable=["component", "fault"], help={
    "confirm": "The deployment's name, as the refusal prints it: the drill hurts it on purpose.",
    "component": "Only this component (repeatable; default: every one, as invoke status lists them).",
    "fault": "Only this fault: crash, freeze or restart (repeatable; default: all three).",
    "freeze-s": "How long a freeze lasts (SIGSTOP, then SIGCONT; compose: pause, unpause). Default 20.",
    "hold-s": "Keep a crashed component down this long (past its alert's for:) and check the alert fires "
              "and resolves. Default 0: its supervisor brings it back at once.",
    "clients": "Concurrent Prefect clients creating flow runs and changing their states. Default 20.",
    "idempotency-keys": "Create runs with an idempotency key, as Prefect's engine-side clients should (default). "
                        "--no-idempotency-keys counts the runs a retried creation stores twice.",
    "json": "Print the results as JSON.",
    "target": TARGET_HELP,
})
@reports_user_errors
def fault_drill(c: Context, confirm: str = "", component: list[str] | None = None, fault: list[str] | None = None,
                freeze_s: float = 20.0, hold_s: float = 0.0, clients: int = 20, idempotency_keys: bool = True,
                json_: bool = False, target: str | None = None) -> None:
    """Fault drill: crash, freeze and restart each component under load; count client errors, lost and doubled
    writes, time to healthy and alerts. Exits non-zero when a goal is missed."""
    chosen = _target(target, "fault-drill")
    stack = drill_stack(chosen)
    if confirm != stack.injector.stack_name:
        raise Exit(f"error: the fault drill crashes and freezes the components of {stack.injector.stack_name} on "
                   f"purpose; its clients may see slow requests\n"
                   f"  fix: invoke fault-drill --confirm {stack.injector.stack_name}", code=1)
    pairs = plan(stack.injector.components(), component or [], fault or [])
    options = DrillOptions(clients=clients, freeze_s=freeze_s, hold_s=hold_s, idempotency_keys=idempotency_keys)
    results = []
    for number, (name, kind) in enumerate(pairs, 1):
        console.step(f"[{number}/{len(pairs)}] {kind} of {name}")
        result = run_fault(stack, name, kind, options)
        console.note(("[green]goals met[/green]" if result.passed else f"[red]missed: {'; '.join(result.missed)}[/red]")
                     + f"; {result.operations} requests, healthy after {result.healthy_after_s}s")
        results.append(result)
    if json_:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        console.out.print(results_table(results))
        for line in missed_lines(results):
            console.out.print(line, markup=False)
    failed = [r for r in results if not r.passed]
    if failed:
        raise Exit(f"error: {len(failed)} of {len(results)} faults missed a goal (see the table)\n"
                   "  fix: read docs/fault-drills.md#reading-the-report for what each figure means and where to look",
                   code=1)
    console.step(f"all {len(results)} faults met every goal")
