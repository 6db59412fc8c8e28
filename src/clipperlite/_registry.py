"""The Clipper's tables and every synchronous configuration rule: apps, models, links,
versions, the SLO each model's batch budget is derived from, and the `get_*` views.

No event loop here: the `Registry` only checks and changes tables, so each rule is
testable without one. The facade starts and stops the replicas.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _defaults
from ._clock import MICROS
from ._errors import (
    AlreadyExistsError,
    ClipperError,
    UnknownApplicationError,
    UnknownModelError,
    describe,
)
from ._inputs import KeyFunc, Validator, make_key_func, make_validator, normalize_input_type
from ._model import ModelVersion
from ._selection import BUILTIN_POLICIES, SelectionPolicy
from ._stats import LatencyHistogram
from ._types import AppStatistics, DefaultCause


class AppStats:
    """What an app's queries came to: answers, defaults by cause, latencies."""

    __slots__ = ("answered", "defaults", "latency", "queries")

    def __init__(self) -> None:
        self.queries = 0
        self.answered = 0
        self.defaults: dict[DefaultCause, int] = {}
        self.latency = LatencyHistogram()


class ContextState:
    """One context's policy state and the links it was made for (checked by identity)."""

    __slots__ = ("links", "state")

    def __init__(self, state: Any, links: tuple[str, ...]) -> None:
        self.state = state
        self.links = links


class Served:
    """What answered one prediction: the models whose outputs were combined and, for a
    policy with `probability(state, model)`, the chance the one model had."""

    __slots__ = ("answered", "probability")

    def __init__(self, answered: tuple[str, ...], probability: float | None) -> None:
        self.answered = answered
        self.probability = probability


@dataclass(eq=False)
class App:
    """A registered application. `links` is replaced, never changed in place, so a
    policy state can tell by identity whether it is still for the current links.

    `state` is the shared state (`context=None`); `contexts` holds one state per other
    context, least recently used first, at most `max_contexts`; `served` remembers
    what answered recent predictions, for the feedback join.
    """

    name: str
    input_type: str
    default_output: Any
    slo_micros: float
    slo_given: Any
    policy: SelectionPolicy
    policy_name: str
    min_confidence: float | None
    validate: Validator
    key: KeyFunc
    #: Whether each default answer gets a copy of `default_output` (it is mutable).
    copy_default: bool = False
    #: Whether the "SLO cannot be met" warning was logged (once per app).
    slo_warned: bool = False
    links: tuple[str, ...] = ()
    state: Any = None
    state_links: tuple[str, ...] | None = None
    stats: AppStats = field(default_factory=AppStats)
    max_contexts: int = _defaults.MAX_CONTEXTS
    contexts: OrderedDict[Hashable, ContextState] = field(default_factory=OrderedDict)
    served: OrderedDict[tuple[Hashable, int], Served] = field(default_factory=OrderedDict)

    def default(self) -> Any:
        """The default output for one answer: the app's own object when immutable, else a
        copy, so one caller mutating its answer changes no other caller's."""
        return copy.deepcopy(self.default_output) if self.copy_default else self.default_output

    @property
    def slo(self) -> float:
        """The SLO in seconds."""
        return self.slo_micros / MICROS

    def policy_state(self) -> Any:
        """The policy's state for the current links (initialised when first needed)."""
        if self.state_links is not self.links:
            self.state = self.policy.init_state(list(self.links), self.state)
            self.state_links = self.links
        return self.state

    def context_state(self, context: Hashable, *, create: bool = True) -> Any:
        """The policy state of `context` for the current links: made by `init_state` on
        first use (unless `create` is False: then None), re-made from the old one when
        the links changed; using it makes it the most recently used."""
        contexts = self.contexts
        entry = contexts.get(context)
        if entry is None:
            if not create:
                return None
            entry = ContextState(self.policy.init_state(list(self.links)), self.links)
            contexts[context] = entry
            if len(contexts) > self.max_contexts:
                contexts.popitem(last=False)
        else:
            if entry.links is not self.links:
                entry.state = self.policy.init_state(list(self.links), entry.state)
                entry.links = self.links
            contexts.move_to_end(context)
        return entry.state

    def set_context_state(self, context: Hashable, state: Any) -> None:
        """Give `context` this state (for the current links), as its most recent use."""
        if context is None:
            self.state, self.state_links = state, self.links
            return
        self.contexts[context] = ContextState(state, self.links)
        self.contexts.move_to_end(context)
        if len(self.contexts) > self.max_contexts:
            self.contexts.popitem(last=False)

    def remember(self, record: tuple[Hashable, int], served: Served) -> None:
        """Record what answered the prediction `record` (context, hash of the input key)."""
        table = self.served
        table[record] = served
        table.move_to_end(record)
        if len(table) > _defaults.SERVED_RECORDS:
            table.popitem(last=False)

    def statistics(self) -> AppStatistics:
        """A frozen snapshot of the app's figures."""
        s = self.stats
        h = s.latency
        return AppStatistics(
            name=self.name,
            slo_micros=self.slo_micros,
            policy=self.policy_name,
            linked_models=self.links,
            queries=s.queries,
            answered=s.answered,
            defaults=dict(s.defaults),
            latency_p50_micros=h.percentile(50),
            latency_p99_micros=h.percentile(99),
            latency_mean_micros=h.mean,
            latency_max_micros=h.max if h.count else None,
            latency=h.export(),
        )


@dataclass(eq=False)
class Model:
    """A deployed model: its versions by key, and which one queries go to."""

    name: str
    input_type: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    current: str | None = None

    def current_version(self) -> ModelVersion | None:
        """The version queries go to, if any is deployed."""
        return self.versions.get(self.current) if self.current is not None else None


@dataclass(frozen=True)
class DeploySpec:
    """The checked arguments of one `deploy_model` call (times in seconds)."""

    name: str
    version: int | str
    key: str
    input_type: str
    func: Callable[[list[Any]], Any]
    num_replicas: int
    batch_size: int | None
    batch_wait: float
    max_queue: int
    cache: bool

    @classmethod
    def check(
        cls,
        name: object,
        version: object,
        input_type: object,
        func: Any,
        *,
        num_replicas: object,
        batch_size: object,
        batch_wait_micros: object,
        max_queue: object,
        cache: object = True,
    ) -> DeploySpec:
        """Validate deploy_model's arguments, naming the first that is wrong."""
        if not isinstance(name, str) or not name:
            raise ClipperError(f"a model name is a non-empty str, got {name!r}")
        key = version_key(version)
        if not callable(func):
            raise ClipperError(f"func must be callable (a list of inputs -> outputs), got {func!r}")
        if not isinstance(cache, bool):
            raise ClipperError(f"cache must be True or False, got {cache!r}")
        return cls(
            name=name,
            version=version,  # type: ignore[arg-type]
            key=key,
            input_type=normalize_input_type(input_type),
            func=func,
            num_replicas=count("num_replicas", num_replicas, minimum=0),
            batch_size=None if batch_size is None else count("batch_size", batch_size, minimum=1),
            batch_wait=positive("batch_wait_micros", batch_wait_micros, allow_zero=True) / MICROS,
            max_queue=count("max_queue", max_queue, minimum=1),
            cache=cache,
        )


def make_policy(policy: object, rng: np.random.Generator) -> tuple[SelectionPolicy, str]:
    """A policy object and its name from a name ("exp3", "exp4") or an object."""
    if isinstance(policy, str):
        factory = BUILTIN_POLICIES.get(policy.lower())
        if factory is None:
            raise ClipperError(
                f"unknown policy {policy!r}: use 'exp3', 'exp4' or a SelectionPolicy object"
            )
        return factory(rng), policy.lower()
    if isinstance(policy, type):
        raise ClipperError(
            f"policy must be an instance, not the class {policy.__name__}:"
            f" pass {policy.__name__}() (or 'exp3' / 'exp4')"
        )
    if isinstance(policy, SelectionPolicy):
        return policy, type(policy).__name__
    raise ClipperError(
        f"policy must be 'exp3', 'exp4' or an object with init_state, select, combine and"
        f" observe methods; got {policy!r}"
    )


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, frozenset)


def _immutable(value: object, depth: int = 0) -> bool:
    """Whether a value cannot change in place (None, numbers, str, bytes, tuples of them)."""
    if type(value) in _IMMUTABLE:
        return True
    if type(value) is tuple and depth < 8:
        return all(_immutable(v, depth + 1) for v in value)
    return False


def version_key(version: object) -> str:
    """The key of a model version: its string form (a bool is not a version)."""
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ClipperError(
            f"a model version is an int or a str, got {version!r} ({type(version).__name__})"
        )
    key = str(version)
    if not key.strip():
        raise ClipperError("a model version must not be empty")
    return key


def positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite number above zero (or at least zero), else a ClipperError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ClipperError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        text = repr(value)
        shown = text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"
        raise ClipperError(f"{name} must be a finite number, got {shown}") from None
    if math.isnan(number):
        raise ClipperError(f"{name} must be a number, got {value!r}")
    if math.isinf(number):
        raise ClipperError(
            f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}"
        )
    if number < 0 or (number == 0 and not allow_zero):
        raise ClipperError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return number


def count(name: str, value: object, *, minimum: int) -> int:
    """An int of at least `minimum`, else a ClipperError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ClipperError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class Registry:
    """Apps, models, links and versions, with every rule that keeps them consistent.

    Deploys are two-step because replicas start in between: `begin_deploy` checks
    the spec against the tables (and against other deploys still starting) and
    reserves its name and version; `add_version` puts the started version in
    service; `end_deploy` releases the reservation either way.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.apps: dict[str, App] = {}
        self.models: dict[str, Model] = {}
        #: Deploys whose replicas are starting, by (name, version key): their input type.
        self._pending: dict[tuple[str, str], str] = {}
        #: Stopped versions by (name, version key), their final figures kept until the
        #: same version is deployed again.
        self.stopped: dict[tuple[str, str], ModelVersion] = {}
        #: Threads abandoned by stopped versions deployed again since (their figures went).
        self.abandoned_before = 0

    # -- applications --------------------------------------------------------------
    def register_application(
        self,
        name: object,
        input_type: object,
        default_output: Any,
        slo_micros: object,
        policy: object,
        min_confidence: object,
        max_contexts: object = _defaults.MAX_CONTEXTS,
    ) -> App:
        """Add an app from register_application's arguments, naming the first that is wrong."""
        if isinstance(name, str) and name in self.apps:
            raise AlreadyExistsError(
                f"application {name!r} already exists: delete_application({name!r}) first,"
                " or register it under another name",
                name=name,
            )
        if not isinstance(name, str) or not name:
            raise ClipperError(f"an application name is a non-empty str, got {name!r}")
        itype = normalize_input_type(input_type)
        slo = positive("slo_micros", slo_micros)
        if min_confidence is not None:
            conf = positive("min_confidence", min_confidence, allow_zero=True)
            if conf > 1:
                raise ClipperError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        kept = count("max_contexts", max_contexts, minimum=1)
        pol, pol_name = make_policy(policy, self._rng)
        copy_default = not _immutable(default_output)
        if copy_default:
            try:  # the app's own copy: the registrant may change its object later
                default_output = copy.deepcopy(default_output)
            except Exception:  # it cannot be copied: it is shared, as given
                copy_default = False
        app = App(
            name=name,
            input_type=itype,
            copy_default=copy_default,
            default_output=default_output,
            slo_micros=slo,
            slo_given=slo_micros,
            policy=pol,
            policy_name=pol_name,
            min_confidence=min_confidence,  # type: ignore[arg-type]
            validate=make_validator(itype),
            key=make_key_func(itype),
            max_contexts=kept,
        )
        self.apps[name] = app
        return app

    def delete_application(self, name: str) -> None:
        """Remove an app and its links."""
        app = self.app(name)
        del self.apps[name]
        for model in app.links:
            self.update_budget(model)

    def app(self, name: str) -> App:
        """The app named `name`, or UnknownApplicationError."""
        app = self.apps.get(name)
        if app is None:
            raise UnknownApplicationError(
                f"no application named {name!r}"
                + (f" (known: {', '.join(sorted(self.apps))})" if self.apps else ""),
                app=name,
            )
        return app

    # -- links -----------------------------------------------------------------------
    def link(self, app_name: str, model_name: str) -> None:
        """Let an app query a model of the same input type."""
        app = self.app(app_name)
        model = self.model(model_name)
        if model.input_type != app.input_type:
            raise ClipperError(
                f"cannot link model {model_name!r} ({model.input_type}) to app {app_name!r}"
                f" ({app.input_type}): an app and its models must have the same input type"
            )
        if model_name not in app.links:
            self._relink(app, (*app.links, model_name))
            self.update_budget(model_name)

    def unlink(self, app_name: str, model_name: str) -> None:
        """Stop an app from querying a model."""
        app = self.app(app_name)
        if model_name not in app.links:
            raise ClipperError(
                f"model {model_name!r} is not linked to app {app_name!r}"
                f" (linked: {list(app.links) or 'none'})"
            )
        self._relink(app, tuple(m for m in app.links if m != model_name))
        self.update_budget(model_name)

    @staticmethod
    def _relink(app: App, links: tuple[str, ...]) -> None:
        """Give the app new links; a policy that has state re-initialises it at once, and
        if it refuses, the links stay as they were."""
        if app.state is not None and links:
            try:
                state = app.policy.init_state(list(links), app.state)
            except Exception as exc:
                raise ClipperError(
                    f"app {app.name!r}: policy {app.policy_name} init_state raised"
                    f" {describe(exc)}; the link was not changed"
                ) from exc
            app.state, app.state_links = state, links
        app.links = links

    def slo_for(self, model_name: str) -> float:
        """The tightest SLO (seconds) of the apps linking the model: its batch budget's basis."""
        slos = [a.slo for a in self.apps.values() if model_name in a.links]
        return min(slos) if slos else _defaults.UNLINKED_SLO_S

    def update_budget(self, model_name: str) -> None:
        """Re-derive every version's batch budget after the model's apps changed."""
        model = self.models.get(model_name)
        if model is None:
            return
        slo = self.slo_for(model_name)
        for version in model.versions.values():
            version.set_slo(slo)

    # -- models and versions ---------------------------------------------------------
    def model(self, name: str) -> Model:
        """The deployed model named `name`, or UnknownModelError."""
        model = self.models.get(name)
        if model is None:
            raise UnknownModelError(
                f"no model named {name!r} is deployed"
                + (f" (deployed: {', '.join(sorted(self.models))})" if self.models else ""),
                model=name,
            )
        return model

    def version(self, name: str, version: int | str | None) -> ModelVersion:
        """A deployed version (the current one for None), or UnknownModelError."""
        model = self.model(name)
        key = model.current if version is None else version_key(version)
        mv = model.versions.get(key) if key is not None else None
        if mv is None:
            raise UnknownModelError(
                f"model {name!r} has no deployed version {version!r}"
                f" (deployed: {', '.join(model.versions) or 'none'})",
                model=name,
                version=None if version is None else str(version),
            )
        return mv

    def any_version(self, name: str, version: int | str | None) -> ModelVersion:
        """A deployed version, or else a stopped one (whose final figures are kept)."""
        try:
            return self.version(name, version)
        except UnknownModelError:
            stopped = [mv for (n, _), mv in self.stopped.items() if n == name]
            if version is not None:
                key = version_key(version)
                stopped = [mv for mv in stopped if mv.version_key == key]
            if not stopped:
                raise
            return stopped[-1]

    def begin_deploy(self, spec: DeploySpec) -> None:
        """Check a deploy against the tables and reserve its name and version."""
        name, key, itype = spec.name, spec.key, spec.input_type
        for linked in self.apps.values():
            if name in linked.links and linked.input_type != itype:
                raise ClipperError(
                    f"model {name!r} is linked to app {linked.name!r}, which takes"
                    f" {linked.input_type}; it cannot be deployed taking {itype}"
                    " (unlink it first, or deploy under another name)"
                )
        if (name, key) in self._pending:
            raise AlreadyExistsError(
                f"model {name!r} version {spec.version!r} is being deployed already", name=name
            )
        for (other, _), pending_type in self._pending.items():
            if other == name and pending_type != itype:
                raise ClipperError(
                    f"model {name!r} is being deployed taking {pending_type}; a version"
                    f" cannot take {itype}: deploy it under another name"
                )
        existing = self.models.get(name)
        if existing is not None:
            if key in existing.versions:
                raise AlreadyExistsError(
                    f"model {name!r} version {spec.version!r} is already deployed:"
                    f" deploy a new version, or stop_model({name!r}, {spec.version!r}) first",
                    name=name,
                )
            if existing.input_type != itype:
                raise ClipperError(
                    f"model {name!r} takes {existing.input_type}; a new version cannot take"
                    f" {itype}: deploy it under another name"
                )
        self._pending[name, key] = itype

    def end_deploy(self, spec: DeploySpec) -> None:
        """Release a deploy's reservation (it succeeded or failed)."""
        self._pending.pop((spec.name, spec.key), None)

    def add_version(self, mv: ModelVersion) -> None:
        """Put a started version in service and make it current."""
        model = self.models.get(mv.name)
        if model is None:
            model = self.models[mv.name] = Model(mv.name, mv.input_type)
        model.versions[mv.version_key] = mv
        model.current = mv.version_key
        old = self.stopped.pop((mv.name, mv.version_key), None)  # fresh figures from now on
        if old is not None:
            self.abandoned_before += old.abandoned
        self.update_budget(mv.name)

    def set_current(self, name: str, version: int | str) -> None:
        """Make an already deployed version the current one."""
        mv = self.version(name, version)
        self.models[name].current = mv.version_key

    def take_out_of_service(self, name: str, version: int | str | None) -> list[ModelVersion]:
        """Remove one version (or all) from the tables, before its replicas stop, so
        queries move on at once; the most recently deployed remaining one becomes current."""
        model = self.model(name)
        if version is None:
            keys = list(model.versions)
        else:
            keys = [self.version(name, version).version_key]
        taken = [model.versions.pop(key) for key in keys]
        if model.current not in model.versions:
            model.current = next(reversed(model.versions), None)
        if not model.versions and self.models.get(name) is model:
            del self.models[name]
        for mv in taken:
            self.stopped[name, mv.version_key] = mv
        return taken

    def is_current(self, mv: ModelVersion) -> bool:
        """Whether queries to mv's model go to mv."""
        model = self.models.get(mv.name)
        return (
            model is not None
            and model.versions.get(mv.version_key) is mv
            and (model.current == mv.version_key)
        )

    # -- views -----------------------------------------------------------------------
    def app_info(self, name: str) -> dict[str, Any]:
        """An app's configuration as plain values."""
        app = self.app(name)
        return {
            "name": app.name,
            "input_type": app.input_type,
            "default_output": app.default(),
            "slo_micros": app.slo_given,
            "policy": app.policy_name,
            "min_confidence": app.min_confidence,
            "max_contexts": app.max_contexts,
            "linked_models": list(app.links),
        }

    def version_info(self, mv: ModelVersion) -> dict[str, Any]:
        """A model version's configuration and state as plain values."""
        return {
            "name": mv.name,
            "version": mv.version,
            "input_type": mv.input_type,
            "is_current": self.is_current(mv),
            "backend": mv.backend_name,
            "num_replicas": mv.num_replicas,
            "batch_size": mv.batch_size,
            "max_batch_size": mv.sizer.max_batch,
            "batch_wait_micros": mv.batch_wait * MICROS,
            "max_queue": mv.batcher.max_queue,
            "cache": mv.cache,
            "linked_apps": sorted(a.name for a in self.apps.values() if mv.name in a.links),
        }

    def all_versions(self) -> list[ModelVersion]:
        """Every deployed version, by model name then deploy order."""
        return [mv for n in sorted(self.models) for mv in self.models[n].versions.values()]
