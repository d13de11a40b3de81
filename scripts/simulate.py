"""Run the fleet model (tests/harness/fleetsim.py) and print its figures as a Markdown table.

`--vary FIELD=V1,V2,...` runs once per value (all else as given), to see what a setting costs and buys.
"""

import argparse
import dataclasses
import sys
import time

from tests.harness.fleetsim import Params, Result, simulate

COLUMNS = ("run", "renewals", "orders/cert (max)", "duplicate orders", "takeovers (refused writes)",
           "worst due→served", "worst commit→served", "worst lag of a running node", "within a day of expiry",
           "lock waits/renewal", "busiest node's orders", "etcd reads/s mean (peak)", "reconcile keys/s", "writes/s mean (peak)", "watch events/s mean (peak)", "wall")


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__)
    for item in dataclasses.fields(Params):
        default = item.default
        if isinstance(default, bool):
            parse.add_argument(f"--no-{item.name}", dest=item.name, action="store_false",
                               help=f"turn {item.name} off (what it prevents then shows)")
        else:
            parse.add_argument(f"--{item.name.replace('_', '-')}", type=item.type, default=default,
                               help=f"default {default}")
    parse.add_argument("--vary", metavar="FIELD=V1,V2,...", help="one run per value of FIELD")
    return parse


def row(label: str, result: Result, wall: float) -> str:
    p = result.params
    worst = max(result.due_to_served, default=0.0)
    deploy = max(result.commit_to_served, default=0.0)
    orders = result.orders / max(p.certificates, 1)
    reads, writes, watches = (result.rate(result.reads, result.steady_reads), result.rate(result.writes),
                              result.rate(result.watch_events))
    cells = (label, f"{result.renewals:,}", f"{orders:.2f} ({result.orders_per_certificate_max})",
             str(result.duplicates), f"{result.takeovers} ({result.refused_writes})", f"{worst / 3600:.1f} h",
             f"{deploy / 60:.1f} min", f"{result.running_lag / 60:.1f} min", str(result.near_expiry), f"{result.lock_losses / max(result.renewals, 1):.2f}",
             f"{max(result.orders_by_node) / max(result.orders, 1):.0%}",
             _rate(reads), f"{result.reconcile_keys:,.0f}", _rate(writes), _rate(watches), f"{wall:.0f} s")
    return "| " + " | ".join(cells) + " |"


def _value(params: Params, name: str, text: str) -> object:
    kind = {item.name: item.type for item in dataclasses.fields(params)}[name]
    return text.lower() in ("1", "true", "on", "yes") if kind is bool else kind(text)


def _rate(rate: tuple[float, float]) -> str:
    return f"{rate[0]:.3g} ({rate[1]:.3g})"


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    vary = args.pop("vary")
    base = Params(**args)
    runs = [("defaults", base)]
    if vary:
        name, _, values = vary.partition("=")
        runs = [(f"{name}={value}", dataclasses.replace(base, **{name: _value(base, name, value)}))
                for value in values.split(",")]
    print(f"{base.certificates:,} certificates × {base.nodes} nodes × {base.days:g} days, "
          f"{base.lifetime_days:g}-day certificates, seed {base.seed}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    failed = False
    for label, params in runs:
        started = time.monotonic()
        result = simulate(params)
        print(row(label, result, time.monotonic() - started), flush=True)
        failed |= params.fencing and (result.duplicates > 0 or result.near_expiry > 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
