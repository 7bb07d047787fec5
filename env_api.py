"""
env_api.py -- what the agent needs of an environment, and the privileged-information (PI) format both share.

An environment is an object with
    reset(seed) -> (request: str, info: dict)           info["system"] is the system prompt (without PI)
    step(text)  -> (observation: str, reward in [0, 1], terminated, truncated, info)
    privileged_info(kind) -> str                        the PI of the task just reset, for kind in PI_KINDS
and optionally statistics(episodes) -> {name: rate}, rates the evaluation reports beside success (the toy world:
success on shortcut tasks, how often the first action is the user lookup). The agent checks what reset, step and
privileged_info return on every call (a user's environment that misbehaves stops the run naming the method) and
cuts every episode at --max_turns.

The PI is rendered by the environment and placed by the agent: a delimited block at the end of the teacher's
system prompt (pi_block). Numbered PI lines use the same step labels as the agent's turns (step_label), so
following the PI is one look-up.
"""
import math
import traceback

PI_KINDS = ("calls", "names", "hint")  # decreasing information: the exact actions, the tool names, a hint
PI_OPEN, PI_CLOSE = "<secret>", "</secret>"


def step_label(turn):
    """Turn k of an episode is labelled step<k> in the PI and in the agent's chat format, so that finding the
    next step in the PI is one look-up (an induction head), not a count of the turns taken so far."""
    return f"step{turn}"


def pi_block(pi_text):
    """The delimited block inserted into the teacher's system prompt; deleting it gives the student's."""
    return f"\n{PI_OPEN}\n{pi_text}\n{PI_CLOSE}" if pi_text else ""


def env_factory(env):
    """--env as module:factory(split, cfg): the built-in worlds by name, a user's as given."""
    return "toy_env:make" if env == "toy" else "gem_env:make" if env.startswith("gem:") else env


def env_error(env, call, expected, got):
    return SystemExit(f"--env: {type(env).__name__}.{call} must return {expected}; it returned {got!r:.200}")


def call_env(what, call, *args):
    """call(*args), a method or factory of the user's environment: if it raises, its own traceback is printed and
    the run stops under one line naming the call."""
    try:
        return call(*args)
    except Exception as err:
        traceback.print_exc()
        raise SystemExit(f"--env: {what} raised {type(err).__name__} (its traceback is above)") from None


def method(env, name):
    if not callable(getattr(env, name, None)):
        raise SystemExit(f"--env: {type(env).__name__} has no method {name}() (env_api.py lists what one needs)")
    return getattr(env, name)


def checked_reset(env, seed):
    out = call_env(f"{type(env).__name__}.reset({seed})", method(env, "reset"), seed)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str) and isinstance(out[1], dict)
            and isinstance(out[1].get("system"), str)):
        raise env_error(env, f"reset({seed})", "(request: str, info: dict with a 'system' prompt str)", out)
    return out


def checked_privileged_info(env, kind):
    pi = call_env(f"{type(env).__name__}.privileged_info({kind!r})", method(env, "privileged_info"), kind)
    if not isinstance(pi, str) or not pi.strip():
        raise env_error(env, f"privileged_info({kind!r})", "a non-empty str (else the teacher is the student)", pi)
    return pi


def checked_step(env, text):
    out = call_env(f"{type(env).__name__}.step({text!r:.60})", method(env, "step"), text)
    if not (isinstance(out, tuple) and len(out) == 5 and isinstance(out[0], str)
            and isinstance(out[1], (int, float)) and math.isfinite(out[1]) and 0 <= out[1] <= 1):
        raise env_error(env, "step(text)", "(observation: str, reward in [0, 1], terminated, truncated, info)", out)
    return out


def check_env(env, pi_kinds):
    """The first episode's reset and privileged information, checked before any model loads (every later call
    is checked in the rollout)."""
    checked_reset(env, 0)
    for kind in pi_kinds:
        checked_privileged_info(env, kind)
