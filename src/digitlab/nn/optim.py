"""Optimizers that see only lists of arrays, and learning-rate schedules as plain functions of the step.

    from digitlab.nn.optim import SGD, Adam, cosine, onecycle, onecycle_beta1, warmup
    opt = SGD(momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = warmup(cosine(0.1, total_steps=9380), warmup_steps=500)
    for step in range(9380):
        ...                                      # forward, loss, backward
        opt.step(net.parameters(), net.grads(), schedule(step))   # updates the parameters in place
    adam = Adam(beta1_schedule=onecycle_beta1(9380))   # beta1 0.95 -> 0.85 -> 0.95 against schedule=onecycle(...)
    state = opt.state_dict()                     # {"name": "sgd", "t": 9380, ..., "velocity.0": array, ...}
                                                 # (Adam: "m_sum.0", "v_sum.0", ...)
    opt.load_state_dict(state)                   # resume bit-identically

Conventions (PyTorch's, so recipes carry over):
  weight decay (L2):  g <- g + wd * p                        (applied to every array passed in)
  SGD:                p <- p - lr * g
  momentum:           v <- mu * v + g;   p <- p - lr * v
  Nesterov:           v <- mu * v + g;   p <- p - lr * (g + mu * v)
  Adam:               m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  t <- t + 1
                      p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
                      (stored as m_sum = m/(1-b1), v_sum = v/(1-b2): fewer passes over the arrays)
`step` leaves `grads` unchanged (it works in its own scratch arrays) and allocates nothing after the first
call. Plain SGD at lr == 1.0 is a single pass (p -= g): a training loop may fold the learning rate into the
loss gradient (`dscores *= lr` before `backward`, which scales every gradient by linearity) and step with
lr=1.0, saving one pass over every weight array per step (about 8 % of a seed-004 epoch). `state_dict()` is a flat dict of scalars and arrays (safetensors-friendly).
"""

from __future__ import annotations

import math

from digitlab.errors import ConfigError, TrainingError
from digitlab.nn.backend import array_module


class Optimizer:
    """Base: per-parameter state arrays (one list per slot, index = parameter position), made on first step."""

    name = "optimizer"
    hyper: tuple[str, ...] = ()
    slots: tuple[str, ...] = ()          # saved in state_dict as "<slot>.<index>"
    weight_decay = 0.0
    decay_mask: list | None = None      # parallel to the parameters: False where weight decay does not apply

    @property
    def folds_lr(self) -> bool:
        """True when the update is linear in the gradient (plain SGD): a caller may then scale the loss
        gradient by lr before backward and step with lr=1.0 — the same update in one pass per array."""
        return False

    def __init__(self):
        self.t = 0
        self.state: dict[str, list] = {}   # slot -> [array per parameter]
        self._scratch: list = []           # work arrays, one per parameter (never saved)
        self._wd: list = []

    def _ensure_state(self, params):
        if len(self._scratch) != len(params):
            xp = array_module(params[0]) if params else None
            self._scratch = [xp.empty_like(p) for p in params]
            self._wd = [xp.empty_like(p) for p in params] if self.weight_decay else []
            for slot in self.slots:
                if len(self.state.get(slot, ())) != len(params):
                    self.state[slot] = [xp.zeros_like(p) for p in params]

    def step(self, params: list, grads: list, lr: float) -> None:
        """Update every array in `params` in place from the matching array in `grads` (left unchanged)."""
        if len(params) != len(grads):
            raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
        self._ensure_state(params)
        self.t += 1
        lr = float(lr)
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.weight_decay and (self.decay_mask is None or self.decay_mask[i]):   # L2: g + wd * p
                d = array_module(p).multiply(p, self.weight_decay, out=self._wd[i])
                d += g
                g = d
            self._update(i, p, g, lr)

    def state_dict(self) -> dict:
        """Flat dict: name, t, hyper-parameters, and "<slot>.<i>" arrays (copies)."""
        out = {"name": self.name, "t": self.t}
        out.update({h: getattr(self, h) for h in self.hyper})
        for slot, arrays in self.state.items():
            out.update({f"{slot}.{i}": a.copy() for i, a in enumerate(arrays)})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; TrainingError when it belongs to another optimizer or setting."""
        if state.get("name") != self.name:
            raise TrainingError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        for h in self.hyper:
            if h in state and state[h] != getattr(self, h):
                raise TrainingError(f"optimizer state has {h}={state[h]!r}, this run uses {getattr(self, h)!r}")
        self.t = int(state["t"])
        self.state = {}
        for slot in self.slots:
            n = sum(1 for k in state if k.startswith(slot + "."))
            try:
                self.state[slot] = [array_module(state[f"{slot}.{i}"]).array(state[f"{slot}.{i}"], copy=True)
                                    for i in range(n)]
            except KeyError as exc:
                raise TrainingError(f"optimizer state lacks {exc.args[0]!r}") from None


class SGD(Optimizer):
    """Stochastic gradient descent, optional momentum (heavy-ball or Nesterov) and L2 weight decay."""

    name = "sgd"
    hyper = ("momentum", "nesterov", "weight_decay")
    slots = ("velocity",)

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ConfigError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    @property
    def folds_lr(self) -> bool:
        return self.momentum == 0.0 and self.weight_decay == 0.0

    def _update(self, i, p, g, lr):
        xp = array_module(p)
        s = self._scratch[i]
        if self.momentum:
            v = self.state["velocity"][i]
            v *= self.momentum
            v += g                                           # v <- mu v + g
            if self.nesterov:
                xp.multiply(v, self.momentum, out=s)
                s += g                                       # g + mu v
                g = s
            else:
                g = v
        if lr == 1.0:                                        # lr already folded into the gradients: one pass
            p -= g
            return
        xp.multiply(g, lr, out=s)                            # lr * step direction
        p -= s


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and optional L2 weight decay (coupled, added to the gradient).

    Same update as the textbook, arranged to touch each big array as few times as possible (10 passes
    instead of 13): it keeps m_sum = m / (1-b1) and v_sum = v / (1-b2), which need no (1-b) multiply,
    and folds lr and both bias corrections into one scalar applied before the square root.
    """

    name = "adam"
    hyper = ("beta1", "beta2", "eps", "weight_decay")
    slots = ("m_sum", "v_sum")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                 beta1_schedule=None):
        super().__init__()
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ConfigError(f"Adam betas must be in [0, 1), got {beta1}, {beta2}")
        self.beta1, self.beta2, self.eps, self.weight_decay = float(beta1), float(beta2), float(eps), float(weight_decay)
        # beta1_schedule: step (from 0) -> beta1, e.g. onecycle_beta1(total); a pure function of the step count
        # `t`, so a resumed run needs no extra state. None: the constant beta1.
        self.beta1_schedule = beta1_schedule
        self._b1, self._u_scale = self.beta1, self.beta1

    def step(self, params: list, grads: list, lr: float) -> None:
        if self.beta1_schedule is not None:  # this step's beta1 b, last step's a: u = m/(1-b) = b(1-a)/(1-b) u' + g
            b = float(self.beta1_schedule(self.t))
            a = float(self.beta1_schedule(self.t - 1)) if self.t else b
            self._b1, self._u_scale = b, b * (1.0 - a) / (1.0 - b)
        super().step(params, grads, lr)

    def _update(self, i, p, g, lr):
        xp = array_module(p)
        u, w, s = self.state["m_sum"][i], self.state["v_sum"][i], self._scratch[i]
        b1 = self._b1
        u *= self._u_scale                                   # b1 while beta1 is constant
        u += g                                               # u = m / (1-b1):  m <- b1 m + (1-b1) g
        xp.multiply(g, g, out=s)
        w *= self.beta2
        w += s                                               # w = v / (1-b2):  v <- b2 v + (1-b2) g^2
        if lr == 0.0:
            return
        k = lr * (1.0 - b1) / (1.0 - b1 ** self.t)                         # lr * m_hat = k * u
        xp.multiply(w, (1.0 - self.beta2) / (1.0 - self.beta2 ** self.t) / (k * k), out=s)   # v_hat / k^2
        xp.sqrt(s, out=s)
        s += self.eps / k                                    # (sqrt(v_hat) + eps) / k
        xp.divide(u, s, out=s)                               # lr * m_hat / (sqrt(v_hat) + eps)
        p -= s


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, **kwargs) -> Optimizer:
    """SGD/Adam by name with keyword hyper-parameters; ConfigError for unknown names or options."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"optimizer {name!r}: {exc}") from None


# -- learning-rate schedules: functions step -> lr (step counts from 0) ----------------------------------

def constant(lr: float):
    """lr at every step."""
    return lambda step: float(lr)


def step_decay(lr: float, every: int, gamma: float = 0.1):
    """lr * gamma ** (step // every)."""
    if every <= 0:
        raise ConfigError(f"step_decay needs every > 0, got {every}")
    return lambda step: float(lr) * gamma ** (step // every)


def cosine(lr: float, total_steps: int, min_lr: float = 0.0):
    """Cosine annealing from lr (step 0) to min_lr (step total_steps and after)."""
    if total_steps <= 0:
        raise ConfigError(f"cosine needs total_steps > 0, got {total_steps}")

    def schedule(step):
        frac = min(step, total_steps) / total_steps
        return min_lr + (float(lr) - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return schedule


def _two_phases(start: float, peak: float, end: float, total_steps: int, pct_start: float):
    """step -> value: a half cosine from `start` (step 0) to `peak` (step pct_start*total - 1, PyTorch's
    possibly fractional phase boundary), then another to `end` (step total - 1 and after)."""
    if total_steps <= 1:
        raise ConfigError(f"onecycle needs total_steps > 1, got {total_steps}")
    if not 0.0 < pct_start < 1.0:
        raise ConfigError(f"onecycle needs 0 < pct_start < 1, got {pct_start}")
    up_end = float(pct_start * total_steps) - 1.0
    last = float(total_steps - 1)

    def half_cosine(a, b, frac):
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def schedule(step):
        if step <= up_end:
            return half_cosine(start, peak, step / up_end) if up_end > 0 else peak
        return half_cosine(peak, end, min(step - up_end, last - up_end) / (last - up_end))

    return schedule


def onecycle(lr: float, total_steps: int, pct_start: float = 0.3, div: float = 25.0, final_div: float = 1e4):
    """One-cycle policy (Smith & Topin 2017), step for step PyTorch's OneCycleLR(max_lr=lr, total_steps,
    pct_start, div_factor=div, final_div_factor=final_div) with its default cosine annealing:
    from lr/div at step 0 up to lr at step pct_start*total - 1, then down to lr/(div*final_div) at the last
    step total - 1 (and after); each phase is a half cosine between its end values."""
    if div <= 0 or final_div <= 0:
        raise ConfigError(f"onecycle needs positive div and final_div, got {div}, {final_div}")
    return _two_phases(float(lr) / div, float(lr), float(lr) / div / final_div, total_steps, pct_start)


def onecycle_beta1(total_steps: int, pct_start: float = 0.3, low: float = 0.85, high: float = 0.95):
    """Adam's beta1 cycled inversely to `onecycle`'s learning rate, as PyTorch's OneCycleLR does by default
    (cycle_momentum=True, base_momentum=low, max_momentum=high): high -> low at the lr's peak -> high."""
    if not 0.0 <= low <= high < 1.0:
        raise ConfigError(f"onecycle_beta1 needs 0 <= low <= high < 1, got {low}, {high}")
    return _two_phases(high, low, high, total_steps, pct_start)


def warmup(schedule, warmup_steps: int):
    """Linear warm-up: schedule(step) * (step + 1) / warmup_steps for the first warmup_steps steps."""
    if warmup_steps <= 0:
        return schedule
    return lambda step: schedule(step) * min(1.0, (step + 1) / warmup_steps)


SCHEDULES = {"constant": constant, "step_decay": step_decay, "cosine": cosine, "onecycle": onecycle}


def make_schedule(name: str, lr: float, total_steps: int, warmup_steps: int = 0, **kwargs):
    """A schedule by name ("constant", "step_decay" (every, gamma), "cosine" (min_lr), "onecycle" (pct_start,
    div, final_div)), optionally warmed up."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if name in ("cosine", "onecycle"):
        kwargs.setdefault("total_steps", total_steps)
    try:
        return warmup(SCHEDULES[name](lr, **kwargs), warmup_steps)
    except TypeError as exc:
        raise ConfigError(f"schedule {name!r}: {exc}") from None
