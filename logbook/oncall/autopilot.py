"""The autopilot: OPT-175B's restart playbook applied under a policy, through the audited intervention channel.

Why: nobody watches a run for 33 days. OPT's on-call team answered a divergence with the same few moves (roll
back to a checkpoint before the spike, skip the batches that caused it, lower the LR), and midflight already
detects those incidents (`report.incidents`) and already has an audited channel to change a live run
(`record.interventions`). This module joins the two under a written policy, and nothing else: it never
touches the trainer, it only appends requests to `interventions.jsonl` that the trainer validates and
answers like any person's, authored `autopilot:<policy>` and naming the incident in the note.

The pieces, each testable alone:
- `load_policies` / `parse_policies`: the TOML policy file (a stable interface, docs/architecture.md
  "Autopilot policies"), untrusted: a bad file is a one-line ValueError naming the policy and the key.
- `decide`: a PURE function (policies, incidents, state, checkpoints) -> decisions: which policy fires on
  which incident, with which intervention, or why it is held (a limit, no checkpoint far enough back).
- `Ledger`: RUN_DIR/autopilot.jsonl, the append-only record of every proposal and approval; it is the
  state `decide` reads back (limits, "never twice for the same incident"), so a restarted autopilot
  remembers what it did.
- `act`, `approve`, `proposal_for`, `replay`, `Pilot`: what the CLI (`midflight autopilot ...`) runs.
"""

from __future__ import annotations

import math
import re
import time
import tomllib
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from midflight.logbook.analysis.incident import Incident
from midflight.logbook.record import interventions, layout, records
from midflight.logbook.values import step as as_step

LEDGER = "autopilot.jsonl"
MODES = ("suggest", "ask", "auto")
SEVERITIES = ("low", "medium", "high")
CLASSIFICATIONS = ("transient", "recovering", "divergent")
# what detection finds (analysis.divergence, analysis.stragglers); a policy naming anything else is a typo
INCIDENT_KINDS = (
    "loss_spike",
    "grad_norm_spike",
    "nonfinite",
    "loss_scale_collapse",
    "slow_divergence",
    "throughput_drop",
    "straggler",
    "slow_node",
    "throttled_gpu",
    "throttling",
    "ecc_errors",
    "device_silent",
)
ROLLBACK = "rollback"  # the composite action: rewind before the onset, skip the window, scale the LR
MAX_FILE_BYTES = 256 * 1024
MAX_POLICIES = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_POLICY_KEYS = {"name", "mode", "when", "then", "max_per_hour", "cooldown_s", "cooldown_steps"}
_WHEN_KEYS = {"kind", "classification", "severity", "steps"}
_ROLLBACK_KEYS = {"action", "before", "skip", "lr_factor", "changes"}


@dataclass(frozen=True)
class When:
    kinds: frozenset[str] | None = None  # None: any kind
    classifications: frozenset[str] | None = None  # None: any classification
    severity: str = "low"  # the least severity that matches
    first_step: int = 0  # the onset must lie in [first_step, last_step]
    last_step: int | None = None

    def matches(self, inc: Incident) -> bool:
        return (
            (self.kinds is None or inc.kind in self.kinds)
            and (self.classifications is None or inc.classification in self.classifications)
            and _severity_rank(inc.severity) >= SEVERITIES.index(self.severity)
            and self.first_step <= inc.start_step
            and (self.last_step is None or inc.start_step <= self.last_step)
        )


@dataclass(frozen=True)
class Then:
    action: str  # a vocabulary action (record.interventions.actions()) or "rollback"
    params: dict = field(default_factory=dict)  # a vocabulary action's params, validated at load
    before: int = 0  # rollback: the checkpoint is at least this many steps before the onset
    skip: str | int = "window"  # rollback: "window" (through the incident's last step), or N batches (0: none)
    lr_factor: float | None = None  # rollback: the LR multiplier in force times this
    changes: dict = field(default_factory=dict)  # rollback: further rewind changes (clip, beta2, ...)


@dataclass(frozen=True)
class Policy:
    name: str
    mode: str
    when: When
    then: Then
    max_per_hour: int = 2
    cooldown_s: float = 600.0
    cooldown_steps: int = 0

    @property
    def author(self) -> str:
        return f"autopilot:{self.name}"


@dataclass(frozen=True)
class Taken:
    """What the autopilot already did (from the ledger): the state the limits are judged on."""

    policy: str
    incident: str  # incident_key
    mode: str
    t: float | None
    step: int | None
    acted: bool  # an intervention was issued (auto, or an approved ask)


@dataclass
class State:
    now: float | None = None  # wall time (None in a replay without wall times: time limits not judged)
    step: int | None = None  # the run's newest step
    taken: list[Taken] = field(default_factory=list)
    busy: bool = False  # an autopilot request is still pending in the run: nothing new until it is answered
    lr_multiplier: float = 1.0  # the LR multiplier in force (interventions keep it across rewinds)


@dataclass
class Decision:
    policy: str
    mode: str
    incident: str  # incident_key
    step: int | None  # the step at which it was decided (the run's newest step)
    action: str | None  # the intervention to issue (None when held)
    params: dict
    note: str
    held: str | None = None  # why nothing is proposed now (a limit, no checkpoint): judged again later

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "mode": self.mode,
            "incident": self.incident,
            "step": self.step,
            "action": self.action,
            "params": self.params,
            "note": self.note,
            "held": self.held,
        }


# ----------------------------------------------------------------------------------------------- the policy file
def _severity_rank(sev) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else 0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _words(v) -> str:
    return repr(v)[:60]


def _set_of(where: str, value, allowed: tuple[str, ...]) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ValueError(f"{where} must be one of {', '.join(allowed)} or a non-empty list of them")
    bad = [x for x in items if x not in allowed]
    if bad:
        raise ValueError(f"{where}: unknown {_words(bad[0])}; one of {', '.join(allowed)}")
    return frozenset(items)


def _when(where: str, raw) -> When:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table")
    extra = set(raw) - _WHEN_KEYS
    if extra:
        raise ValueError(f"{where} has unknown key {_words(sorted(extra)[0])}; keys: {', '.join(sorted(_WHEN_KEYS))}")
    severity = raw.get("severity", "low")
    if severity not in SEVERITIES:
        raise ValueError(f"{where}.severity must be one of {', '.join(SEVERITIES)}, not {_words(severity)}")
    first, last = 0, None
    if "steps" in raw:
        steps = raw["steps"]
        if not isinstance(steps, list) or len(steps) not in (1, 2) or not all(_is_int(s) for s in steps):
            raise ValueError(f"{where}.steps must be [FIRST] or [FIRST, LAST], whole step numbers")
        try:
            first = as_step(steps[0])
            last = as_step(steps[1]) if len(steps) == 2 else None
        except ValueError as exc:
            raise ValueError(f"{where}.steps: {exc}") from None
        if last is not None and last < first:
            raise ValueError(f"{where}.steps: LAST ({last}) is before FIRST ({first})")
    return When(
        _set_of(f"{where}.kind", raw.get("kind"), INCIDENT_KINDS),
        _set_of(f"{where}.classification", raw.get("classification"), CLASSIFICATIONS),
        severity,
        first,
        last,
    )


def _then(where: str, raw) -> Then:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table with an action")
    action = raw.get("action")
    known = [*interventions.actions(), ROLLBACK]
    if not isinstance(action, str) or action not in known:
        raise ValueError(f"{where}.action must be one of {', '.join(known)}, not {_words(action)}")
    if action != ROLLBACK:
        params = {k: v for k, v in raw.items() if k != "action"}
        try:
            return Then(action, interventions.validate(action, params))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    extra = set(raw) - _ROLLBACK_KEYS
    if extra:
        raise ValueError(
            f"{where}: rollback does not take {_words(sorted(extra)[0])}; it takes {', '.join(sorted(_ROLLBACK_KEYS))}"
        )
    before = raw.get("before", 0)
    if not _is_int(before) or not 0 <= before <= 10**9:
        raise ValueError(f"{where}.before must be a whole number of steps in [0, 1e9], not {_words(before)}")
    skip = raw.get("skip", "window")
    if skip != "window" and not (_is_int(skip) and 0 <= skip <= 10**9):
        raise ValueError(f'{where}.skip must be "window" or a whole number of batches in [0, 1e9], not {_words(skip)}')
    lr_factor = raw.get("lr_factor")
    if lr_factor is not None and not (_is_num(lr_factor) and 0 < lr_factor <= 100):
        raise ValueError(f"{where}.lr_factor must be a number in (0, 100], not {_words(lr_factor)}")
    changes = raw.get("changes", {})
    if not isinstance(changes, dict):
        raise ValueError(f"{where}.changes must be a table of rewind changes")
    taken_by_rollback = {"skip_batches", "lr_multiplier"} & set(changes)
    if taken_by_rollback:
        key = sorted(taken_by_rollback)[0]
        raise ValueError(
            f"{where}.changes: {key} is set by rollback's {'skip' if key == 'skip_batches' else 'lr_factor'}"
        )
    try:
        interventions.validate(interventions.REWIND, {"checkpoint_step": 0, "changes": changes})
    except ValueError as exc:
        raise ValueError(f"{where}.changes: {exc}") from None
    return Then(ROLLBACK, {}, before, skip, float(lr_factor) if lr_factor is not None else None, dict(changes))


def _policy(i: int, raw) -> Policy:
    where = f"policy {i}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table ([[policy]])")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)")
    where = f"policy {i} ({name})"
    extra = set(raw) - _POLICY_KEYS
    if extra:
        raise ValueError(f"{where} has unknown key {_words(sorted(extra)[0])}; keys: {', '.join(sorted(_POLICY_KEYS))}")
    mode = raw.get("mode")
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {', '.join(MODES)}, not {_words(mode)}")
    max_per_hour = raw.get("max_per_hour", 2)
    if not _is_int(max_per_hour) or not 1 <= max_per_hour <= 1000:
        raise ValueError(f"{where}: max_per_hour must be a whole number in [1, 1000], not {_words(max_per_hour)}")
    cooldown_s = raw.get("cooldown_s", 600)
    if not _is_num(cooldown_s) or not 0 <= cooldown_s <= 7 * 86400:
        raise ValueError(f"{where}: cooldown_s must be a number of seconds in [0, 604800], not {_words(cooldown_s)}")
    cooldown_steps = raw.get("cooldown_steps", 0)
    if not _is_int(cooldown_steps) or not 0 <= cooldown_steps <= 10**9:
        raise ValueError(f"{where}: cooldown_steps must be a whole number in [0, 1e9], not {_words(cooldown_steps)}")
    if "then" not in raw:
        raise ValueError(f"{where} needs a [policy.then] table with an action")
    return Policy(
        name,
        mode,
        _when(f"{where} when", raw.get("when")),
        _then(f"{where} then", raw["then"]),
        max_per_hour,
        float(cooldown_s),
        cooldown_steps,
    )


def parse_policies(text: str, source: str = "policy") -> list[Policy]:
    """The policies of a TOML text, in file order; ValueError with one line naming `source` and the fault."""
    if not isinstance(text, str):
        raise ValueError(f"{source}: the policy file must be text")
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise ValueError(f"{source}: larger than {MAX_FILE_BYTES // 1024} KiB; a policy file is a few tables")
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ValueError(f"{source}: not valid TOML: {str(exc).splitlines()[0][:200]}") from None
    extra = set(doc) - {"version", "policy"}
    if extra:
        raise ValueError(f"{source}: unknown top-level key {_words(sorted(extra)[0])}; expected version and [[policy]]")
    if doc.get("version", 1) != 1:
        raise ValueError(f"{source}: version must be 1, not {_words(doc.get('version'))}")
    raw = doc.get("policy")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: no policies; write at least one [[policy]] table")
    if len(raw) > MAX_POLICIES:
        raise ValueError(f"{source}: {len(raw)} policies; at most {MAX_POLICIES}")
    out, names = [], set()
    for i, entry in enumerate(raw, 1):
        try:
            pol = _policy(i, entry)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        if pol.name in names:
            raise ValueError(f"{source}: policy {i}: the name {pol.name!r} is used twice")
        names.add(pol.name)
        out.append(pol)
    return out


def load_policies(path) -> list[Policy]:
    path = Path(path)
    try:
        data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the policy file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the policy file is not UTF-8 text") from None
    return parse_policies(text, str(path))


# ------------------------------------------------------------------------------------------------- the decision
def incident_key(inc: Incident) -> str:
    """An incident's name for "never twice": kind, metric and onset. Not the segment: a rollback that does not
    cure an incident at the same onset must not be repeated on the new branch forever."""
    return f"{inc.kind}:{inc.metric or '-'}@{inc.start_step}"


def _onset(key: str) -> int | None:
    tail = key.rpartition("@")[2]
    return int(tail) if tail.isdigit() else None


def describe(inc: Incident) -> str:
    peak = f"{inc.peak_value:.4g}" if _is_num(inc.peak_value) else str(inc.peak_value)
    return (
        f"{inc.kind} ({inc.classification}, {inc.severity}) on {inc.metric or 'the run'} from step {inc.start_step} "
        f"to {inc.end_step}, peak {peak} at step {inc.peak_step}"
    )


def _held(pol: Policy, inc: Incident, step, why: str) -> Decision:
    return Decision(pol.name, pol.mode, incident_key(inc), step, None, {}, describe(inc), held=why)


def _limits(pol: Policy, state: State) -> str | None:
    mine = [t for t in state.taken if t.policy == pol.name and t.mode != "suggest"]
    if state.now is not None:
        recent = [t for t in mine if t.t is not None and state.now - t.t < 3600]
        if len(recent) >= pol.max_per_hour:
            return f"max_per_hour: {len(recent)} actions in the last hour"
        last_t = max((t.t for t in mine if t.t is not None), default=None)
        if last_t is not None and state.now - last_t < pol.cooldown_s:
            return f"cooldown_s: the last action was {state.now - last_t:.0f} s ago"
    if pol.cooldown_steps and state.step is not None:
        last_step = max((t.step for t in mine if t.step is not None), default=None)
        if last_step is not None and 0 <= state.step - last_step < pol.cooldown_steps:
            return f"cooldown_steps: the last action was at step {last_step}"
    return None


def _intervention(pol: Policy, inc: Incident, state: State, checkpoints) -> tuple[str, dict, str] | str:
    """(action, params, what it does) for the policy's `then` on this incident, or the reason it cannot act."""
    then = pol.then
    if then.action != ROLLBACK:
        return then.action, dict(then.params), f"{then.action} {then.params}"
    limit = inc.start_step - then.before
    usable = [c for c in checkpoints if c <= limit and (state.step is None or c <= state.step)]
    if not usable:
        return f"no complete checkpoint at or before step {limit} ({then.before} steps before the onset)"
    ckpt = max(usable)
    changes = dict(then.changes)
    skip = max(0, inc.end_step - ckpt) if then.skip == "window" else then.skip
    if skip:
        changes["skip_batches"] = skip
    if then.lr_factor is not None:
        changes["lr_multiplier"] = state.lr_multiplier * then.lr_factor
    params = {"checkpoint_step": ckpt, "changes": changes}
    what = f"rewind to the checkpoint of step {ckpt}" + "".join(f", {k} -> {v:g}" for k, v in changes.items())
    return interventions.REWIND, params, what


def decide(policies: list[Policy], incidents: list[Incident], state: State, checkpoints) -> list[Decision]:
    """What the policies do about these incidents now. Pure: reads only its arguments.

    For each live incident (not on an abandoned branch), in onset order, every policy whose `when` matches,
    in file order: a policy decides once per incident; an incident gets at most one action (auto, or ask),
    by the first policy that may act; suggestions never block an action. A decision is held (and judged
    again on a later call) while a limit or a pending autopilot request stands in the way, or while no
    complete checkpoint lies far enough back. `checkpoints` are the complete checkpoint steps on the
    current branch."""
    checkpoints = sorted({int(c) for c in checkpoints})
    out: list[Decision] = []
    done = {(t.policy, t.incident) for t in state.taken}
    acted = {t.incident for t in state.taken if t.mode != "suggest"}
    # two detectors often see one event (a loss spike and a grad-norm spike with one onset): one action for both
    acted_onsets = {_onset(t.incident) for t in state.taken if t.mode != "suggest"}
    live = sorted((i for i in incidents if not i.superseded), key=lambda i: (i.start_step, i.kind, i.metric or ""))
    for inc in live:
        key = incident_key(inc)
        for pol in policies:
            if (pol.name, key) in done or not pol.when.matches(inc):
                continue
            acting = pol.mode != "suggest"
            if acting and (key in acted or inc.start_step in acted_onsets):
                continue  # never twice for the same incident
            why = _limits(pol, state) if acting else None
            if why is None and acting and state.busy:
                why = "an autopilot request is still pending in the run"
            if why is not None:
                out.append(_held(pol, inc, state.step, why))
                continue
            got = _intervention(pol, inc, state, checkpoints)
            if isinstance(got, str):
                out.append(_held(pol, inc, state.step, got))
                continue
            action, params, what = got
            try:
                params = interventions.validate(action, params)
            except ValueError as exc:  # e.g. an LR multiplier scaled out of the channel's range
                out.append(_held(pol, inc, state.step, f"the intervention would be refused: {exc}"))
                continue
            note = f"autopilot policy {pol.name} ({pol.mode}) on incident {key}: {describe(inc)}; {what}"
            out.append(Decision(pol.name, pol.mode, key, state.step, action, params, note))
            done.add((pol.name, key))
            if acting:
                acted.add(key)
                acted_onsets.add(inc.start_step)
                # the state as the next decision sees it: this action counts against the limits
                state = replace(
                    state, taken=[*state.taken, Taken(pol.name, key, pol.mode, state.now, state.step, True)]
                )
                state.busy = state.busy or pol.mode == "auto"
    return out


# ------------------------------------------------------------------------------------------------- the ledger
class Ledger:
    """RUN_DIR/autopilot.jsonl: every proposal (op "proposal": suggest, ask or auto) and every approval or
    refusal of an `ask`, append-only. What the autopilot did is read back from here, so limits hold across
    restarts of the autopilot. Lines are untrusted: a malformed one is skipped, never raised on."""

    def __init__(self, run_dir):
        run_dir = Path(run_dir)
        if not layout.is_run_dir(run_dir):
            raise FileNotFoundError(f"{str(run_dir)!r} is not a midflight run directory")
        self.run_dir = run_dir
        self.path = run_dir / LEDGER

    def entries(self) -> list[dict]:
        props: dict[str, dict] = {}
        for line_no, rec in records.numbered_records(self.path):
            if rec.get("k") != "autopilot":
                continue
            pid = records.record_id(rec, line_no)
            if rec.get("op") == "proposal" and pid not in props:
                props[pid] = {
                    "id": pid,
                    "t": rec.get("t") if _is_num(rec.get("t")) else None,
                    "step": rec.get("step") if _is_int(rec.get("step")) else None,
                    "policy": str(rec.get("policy"))[:80],
                    "mode": rec.get("mode") if rec.get("mode") in MODES else "suggest",
                    "incident": str(rec.get("incident"))[:200],
                    "action": rec.get("action"),
                    "params": rec.get("params") if isinstance(rec.get("params"), dict) else {},
                    "note": str(rec.get("note"))[:2000],
                    "request": rec.get("request") if isinstance(rec.get("request"), str) else None,
                    "status": {"auto": "issued", "ask": "pending"}.get(rec.get("mode"), "suggested"),
                    "by": None,
                }
            elif rec.get("op") in ("approved", "declined") and pid in props and props[pid]["status"] == "pending":
                props[pid]["status"] = rec["op"]
                props[pid]["by"] = str(rec.get("by"))[:200]
                props[pid]["request"] = rec.get("request") if isinstance(rec.get("request"), str) else None
                props[pid]["t_decided"] = rec.get("t") if _is_num(rec.get("t")) else None
        return list(props.values())

    def taken(self) -> list[Taken]:
        out = []
        for e in self.entries():
            acted = e["mode"] == "auto" or e["status"] == "approved"
            # a pending ask counts against the limits too: a second proposal must not pile up behind it
            out.append(Taken(e["policy"], e["incident"], e["mode"], e.get("t_decided") or e["t"], e["step"], acted))
        return out

    def append(self, rec: dict) -> None:
        records.append_line(self.path, {"k": "autopilot", "t": time.time(), **rec})


def act(run_dir, decision: Decision, ledger: Ledger | None = None) -> dict:
    """Carry out one (not held) decision: auto issues the intervention, ask records a pending proposal,
    suggest records the proposal only. Returns the ledger record."""
    if decision.held is not None or decision.action is None:
        raise ValueError("a held decision has nothing to carry out")
    ledger = ledger or Ledger(run_dir)
    req_id = None
    if decision.mode == "auto":
        req_id = interventions.request(
            run_dir, decision.action, decision.params, note=decision.note, author=f"autopilot:{decision.policy}"
        )
    rec = {"op": "proposal", "id": uuid.uuid4().hex[:12], **decision.to_dict(), "request": req_id}
    rec.pop("held")
    ledger.append(rec)
    return rec


def approve(run_dir, proposal_id: str, *, author: str, decline: bool = False) -> dict:
    """A person's answer to an `ask` proposal: approved issues its intervention (authored by the policy,
    the approver named in the note); declined records the refusal. ValueError when there is nothing to answer."""
    if not isinstance(author, str) or not author.strip() or len(author) > 200:
        raise ValueError("--author must name the person who approves (1-200 characters)")
    ledger = Ledger(run_dir)
    entry = next((e for e in ledger.entries() if e["id"] == proposal_id), None)
    if entry is None:
        raise ValueError(f"no autopilot proposal {str(proposal_id)[:64]!r} in {ledger.path}")
    if entry["mode"] != "ask":
        raise ValueError(f"proposal {proposal_id} is a {entry['mode']} proposal; only an ask waits for approval")
    if entry["status"] != "pending":
        raise ValueError(f"proposal {proposal_id} was already {entry['status']} by {entry['by']}")
    req_id = None
    if not decline:
        req_id = interventions.request(
            run_dir,
            entry["action"],
            entry["params"],
            note=f"{entry['note']}; approved by {author}",
            author=f"autopilot:{entry['policy']}",
        )
    ledger.append({"op": "declined" if decline else "approved", "id": proposal_id, "by": author, "request": req_id})
    return {**entry, "status": "declined" if decline else "approved", "by": author, "request": req_id}


def proposal_for(run_dir, incident: Incident) -> dict | None:
    """The newest proposal the autopilot recorded for this incident (any mode), for an alert to carry; None."""
    try:
        entries = Ledger(run_dir).entries()
    except FileNotFoundError:
        return None
    key = incident_key(incident)
    found = [e for e in entries if e["incident"] == key]
    return found[-1] if found else None


def proposals(
    policies: list[Policy], incident: Incident, checkpoints=(), *, lr_multiplier: float = 1.0
) -> list[Decision]:
    """What the policies would propose for one incident, ignoring limits and history (pure; nothing recorded):
    for an alert that carries the proposed action when no autopilot runs. `proposal_for` reads what one did."""
    state = State(step=incident.end_step, lr_multiplier=lr_multiplier)
    return decide(policies, [replace(incident, superseded=False)], state, checkpoints)


# ------------------------------------------------------------------------------------ reading a run's state
def checkpoint_steps(store, run: str, run_dir=None) -> list[int]:
    """Complete checkpoints on the run's current branch. A live run's own folder decides when there is one
    (RUN_DIR/checkpoints/step-NNNNNNNN/COMPLETE: the trainer prunes old checkpoints, so events alone would
    offer ones that are gone); otherwise the `checkpoint_saved` events of the effective history."""
    from midflight.logbook.store import lineage, queries

    root = Path(run_dir) / "checkpoints" if run_dir is not None else None
    if root is not None and root.is_dir():
        steps = []
        for d in root.iterdir():
            m = re.match(r"^step-(\d{8})$", d.name)
            if m and (d / "COMPLETE").is_file():
                steps.append(int(m[1]))
        return sorted(steps)
    ranges = lineage.effective_ranges(queries.lineage_segments(store, run))
    ev = queries.events(store, run, kinds=["checkpoint_saved"])
    out = set()
    for seg, s in zip(ev["segment_id"], ev["step"]):
        if s is None or (isinstance(s, float) and math.isnan(s)):
            continue
        if any(r.segment_id == seg and r.lo <= s <= r.hi for r in ranges):
            out.add(int(s))
    return sorted(out)


def lr_multiplier(store, run: str) -> float:
    """The LR multiplier the run's interventions put in force (1 without any): the newest applied
    `lr_multiplier` request, or rewind carrying one."""
    from midflight.logbook.store import queries

    df = queries.interventions(store, run)
    value = 1.0
    if df.empty:
        return value
    for _, row in df.iterrows():
        if row.get("status") != "applied":
            continue
        params = row.get("params")
        if isinstance(params, str):
            import json

            try:
                params = json.loads(params)
            except ValueError:
                continue
        if not isinstance(params, dict):
            continue
        if row.get("action") == "lr_multiplier" and _is_num(params.get("factor")):
            value = float(params["factor"])
        elif row.get("action") == interventions.REWIND and isinstance(params.get("changes"), dict):
            f = params["changes"].get("lr_multiplier")
            if _is_num(f):
                value = float(f)
    return value


def pending_autopilot(run_dir) -> bool:
    """An autopilot request is still waiting for the run's answer."""
    return any(str(r.get("author", "")).startswith("autopilot:") for r in interventions.pending(run_dir))


# -------------------------------------------------------------------------------------------- replay and run
@dataclass
class Replayed:
    decision: Decision
    detected_step: int | None
    after_rollback: bool  # an earlier replayed rollback would have changed what followed


def replay(store, run: str, policies: list[Policy]) -> list[Replayed]:
    """What the policies would have done on a finished (or imported) run: each incident is judged at the step
    the online detector raised it, with the checkpoints saved by then and the wall time of that step; the
    limits evolve as if every action had been issued (asks approved at once). After a simulated rollback the
    real run went on without it, so later decisions are marked `after_rollback`."""
    from midflight.logbook.report import incidents as report_incidents
    from midflight.logbook.store import queries

    incs = [i for i in report_incidents.incidents(store, run) if not i.superseded]
    ckpts = checkpoint_steps(store, run)
    walls = queries.step_wall_times(store, run)
    wall_at = {}
    if len(walls):
        cols = list(walls.columns)
        tcol = "wall_time" if "wall_time" in cols else cols[-1]
        wall_at = dict(zip(walls["step"].astype("int64"), walls[tcol]))
    state = State()
    out: list[Replayed] = []
    rolled_at: int | None = None  # the step of the first simulated rollback
    by_detection = sorted(incs, key=lambda i: i.detected_step if i.detected_step is not None else i.end_step)
    for inc in by_detection:
        at = inc.detected_step if inc.detected_step is not None else inc.end_step
        now = wall_at.get(at)
        state.now = float(now) if now is not None and _is_num(float(now)) else None
        state.step = at
        state.busy = False
        for d in decide(policies, [inc], state, [c for c in ckpts if c <= at]):
            out.append(Replayed(d, at, rolled_at is not None and at > rolled_at))
            if d.held is None:
                state.taken.append(Taken(d.policy, d.incident, d.mode, state.now, at, d.mode != "suggest"))
                if d.mode != "suggest" and d.action == interventions.REWIND:
                    rolled_at = at if rolled_at is None else rolled_at
                    f = d.params.get("changes", {}).get("lr_multiplier")
                    if f is not None:
                        state.lr_multiplier = f
    return out


class Pilot:
    """One autopilot over one live run: each `tick()` ingests what the run wrote, asks LiveIncidents for its
    incidents, decides and acts. The CLI's `autopilot run` calls it in a loop; a test can call it by hand."""

    def __init__(self, run_dir, policies: list[Policy], store=None, *, log=print):
        from midflight.logbook.report.incidents import LiveIncidents
        from midflight.logbook.store.database import open_store

        self.run_dir = Path(run_dir)
        self.policies = policies
        self.ledger = Ledger(self.run_dir)
        self.store = store or open_store(layout.default_store_path(self.run_dir))
        self.run = self.run_dir.name
        self.live = LiveIncidents()
        self.log = log
        self._said: set = set()

    def tick(self) -> list[Decision]:
        from midflight.logbook.store import queries
        from midflight.logbook.store.ingest import ingest

        ingest(self.store, [self.run_dir])
        if self.run not in queries.run_ids(self.store):
            return []
        incs = self.live.incidents(self.store, self.run)
        state = State(
            now=time.time(),
            step=_newest_step(self.store, self.run),
            taken=self.ledger.taken(),
            busy=pending_autopilot(self.run_dir),
            lr_multiplier=lr_multiplier(self.store, self.run),
        )
        decisions = decide(self.policies, incs, state, checkpoint_steps(self.store, self.run, self.run_dir))
        for d in decisions:
            if d.held is not None:
                said = (d.policy, d.incident, d.held.split(":")[0])
                if said not in self._said:
                    self._said.add(said)
                    self.log(f"held  {d.policy} on {d.incident}: {d.held}")
                continue
            rec = act(self.run_dir, d, self.ledger)
            self.log(f"{d.mode:5} {d.policy} on {d.incident} at step {d.step}: {d.action} {d.params} (id {rec['id']})")
        return decisions

    def status(self) -> str:
        from midflight.logbook.store import queries

        return queries.run_status(self.store, self.run)


def _newest_step(store, run: str) -> int | None:
    from midflight.logbook.store import queries

    walls = queries.step_wall_times(store, run)
    if not len(walls):
        return None
    return int(walls.loc[walls["wall_time"].idxmax(), "step"])  # the head segment's newest: a rewind goes back
