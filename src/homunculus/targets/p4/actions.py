"""The actions of each generated table, and how an IR entry's parameters map onto them.

A table's IR entries carry one parameter tuple (its outputs). Most tables have one action,
``<table>_set``, writing every output. The verdict table instead acts on the packet in its own
actions (Tofino: a verdict applied by if/else after the table costs a stage): ``verdict_set``
(class and egress port), ``verdict_mark`` (also rewrites the DSCP) and ``verdict_drop``. Which one
an entry uses follows from its parameters; the reader maps it back, so the IR tuple round-trips.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.ir.pipeline import Field, Table, TableRole

VERDICT_ROLES = ("port", "drop", "mark", "dscp")
"""Verdict outputs the program interprets, by name ``verdict_<role>``."""


@dataclass(frozen=True)
class ActionDecl:
    name: str
    params: tuple[Field, ...]
    kind: str  # "set" (write every param to metadata), "verdict_set", "verdict_mark", ...


def _roles(table: Table) -> dict[str, int]:
    """Output index by verdict role; "class" is the one output that is not a verdict role."""
    roles = {o.name.removeprefix("verdict_"): i for i, o in enumerate(table.outputs)
             if o.name.removeprefix("verdict_") in VERDICT_ROLES
             and o.name.startswith("verdict_")}
    others = [i for i in range(len(table.outputs)) if i not in roles.values()]
    if len(others) != 1:
        raise ValueError(f"verdict table {table.name}: expected one class output besides "
                         f"{['verdict_' + r for r in VERDICT_ROLES]}")
    return {"class": others[0], **roles}


def _verdict_decl(kind: str, table: Table, roles: dict[str, int]) -> ActionDecl:
    out = table.outputs
    cls = out[roles["class"]]
    port = (out[roles["port"]],) if "port" in roles else ()
    params = {"verdict_set": (cls, *port), "verdict_drop": (cls,),
              "verdict_mark": (cls, *port, out[roles["dscp"]]) if "dscp" in roles else ()}
    return ActionDecl(kind, params[kind], kind)


def table_actions(table: Table) -> tuple[ActionDecl, ...]:
    """The actions ``table`` declares (the verdict's: those its entries and default use)."""
    if table.role is not TableRole.VERDICT:
        return (ActionDecl(f"{table.name}_set", table.outputs, "set"),)
    roles = _roles(table)
    used = [*(e.params for e in table.entries), table.default]
    kinds = ["verdict_set"]
    if "mark" in roles and "dscp" in roles and any(p[roles["mark"]] for p in used):
        kinds.append("verdict_mark")
    if "drop" in roles and any(p[roles["drop"]] for p in used):
        kinds.append("verdict_drop")
    return tuple(_verdict_decl(k, table, roles) for k in kinds)


def action_call(table: Table, params: tuple[int, ...]) -> tuple[ActionDecl, tuple[int, ...]]:
    """The action an entry with these IR parameters runs, and its arguments."""
    if table.role is not TableRole.VERDICT:
        return ActionDecl(f"{table.name}_set", table.outputs, "set"), params
    roles = _roles(table)
    value = {role: params[i] for role, i in roles.items()}
    if value.get("drop"):
        if value.get("mark"):
            raise ValueError(f"verdict table {table.name}: an entry both drops and marks")
        kind = "verdict_drop"
    elif value.get("mark"):
        kind = "verdict_mark"
    else:
        if value.get("dscp"):
            raise ValueError(f"verdict table {table.name}: a DSCP without the mark flag")
        kind = "verdict_set"
    if kind == "verdict_mark" and "dscp" not in roles:
        raise ValueError(f"verdict table {table.name}: a mark without a DSCP output")
    action = _verdict_decl(kind, table, roles)
    by_name = {o.name: params[i] for i, o in enumerate(table.outputs)}
    return action, tuple(by_name[p.name] for p in action.params)


def params_of_call(table: Table, action_name: str, args: tuple[int, ...],
                   default_port: int, declared: tuple[ActionDecl, ...] | None = None
                   ) -> tuple[int, ...]:
    """Inverse of :func:`action_call`: the IR parameters of an installed action call
    (``declared``: the table's actions, when the caller has them already)."""
    actions = {a.name: a for a in (declared or table_actions(table))}
    if action_name not in actions:
        raise ValueError(f"table {table.name}: unknown action {action_name}")
    action = actions[action_name]
    if len(args) != len(action.params):
        raise ValueError(f"action {action_name}: {len(args)} arguments, "
                         f"{len(action.params)} expected")
    given = {p.name: v for p, v in zip(action.params, args, strict=True)}
    if action.kind == "set":
        return tuple(given[o.name] for o in table.outputs)
    implied = {"verdict_port": default_port, "verdict_drop": int(action.kind == "verdict_drop"),
               "verdict_mark": int(action.kind == "verdict_mark"), "verdict_dscp": 0}
    return tuple(given.get(o.name, implied.get(o.name, 0)) for o in table.outputs)
