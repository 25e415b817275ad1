"""RL4LMs-style custom algorithms: a stable-baselines3 ``OnPolicyAlgorithm`` subclass that only
writes ``train()`` over ``self.rollout_buffer.get(batch_size)``.

RL4LMs documents this extension point and runs such a class inside a wrapper that collects the
rollouts. Here :func:`text_algorithm` builds that wrapper as a subclass whose method order is
``user class -> SB3AlgorithmAdapter -> LMOnPolicyAlgorithm -> OnPolicyAlgorithm``:

* the user's ``__init__`` and ``_setup_model`` run first; their ``super()`` calls reach
  :class:`SB3AlgorithmAdapter`, which takes SB3's constructor arguments (``use_sde``,
  ``sde_sample_freq``, ``tensorboard_log``, ...) and builds the text algorithm: the policy, the
  batched rollout collector and the episode buffer;
* the user's ``train()`` reads the buffer's per-transition view (``get``: RL4LMs' fields
  ``observations``, ``actions``, ``old_values``, ``old_log_prob``, ``advantages``, ``returns``)
  and calls ``self.policy.evaluate_actions(obs, actions)``, RL4LMs' per-transition evaluation;
* the rollout, KL penalty and controller, checkpoints and the trainer loop are the project's.
  Values the user's ``train()`` records with ``self.logger.record`` or
  ``self._tracker.log_training_infos`` become the iteration's training statistics.

The buffer serves raw GAE advantages (SB3's buffers do; such ``train()`` methods normalize per
minibatch themselves). Such an algorithm runs in one process: its ``train()`` does its own
backward passes, without the gradient synchronisation of multi-process runs.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable, Dict, Optional, Type, Union

from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from rl4lms.algorithms.kl_controller import KLController
from rl4lms.algorithms.on_policy import LMOnPolicyAlgorithm
from rl4lms.envs.text_gen_env import TextGenEnv
from rl4lms.policies.base import LMActorCriticPolicy


class TrainingInfoTracker:
    """RL4LMs' ``tracker`` argument as its algorithms use it: ``log_training_infos`` and
    ``log_rollout_infos`` add to the iteration's statistics."""

    def __init__(self, algorithm: LMOnPolicyAlgorithm) -> None:
        self.algorithm = algorithm

    def log_training_infos(self, infos: Dict[str, Any]) -> None:
        self.algorithm.train_stats.update({key: float(value) for key, value in infos.items()})

    def log_rollout_infos(self, infos: Dict[str, Any]) -> None:
        self.algorithm.rollout_stats.update({key: float(value) for key, value in infos.items()})


def is_sb3_algorithm(cls: type) -> bool:
    """An SB3 on-policy algorithm that is not one of this project's text algorithms."""
    return isinstance(cls, type) and issubclass(cls, OnPolicyAlgorithm) and not issubclass(cls, LMOnPolicyAlgorithm)


class SB3AlgorithmAdapter(LMOnPolicyAlgorithm):
    """Where an RL4LMs-style algorithm's ``super().__init__`` lands: SB3's ``OnPolicyAlgorithm``
    arguments, mapped onto :class:`LMOnPolicyAlgorithm`.

    Args (SB3's, in its order): ``policy``, ``env``, ``learning_rate``, ``n_steps``, ``gamma``,
    ``gae_lambda``, ``ent_coef``, ``vf_coef``, ``max_grad_norm`` as in SB3; ``use_sde`` must be
    False (state-dependent exploration has no meaning for token sampling) and ``sde_sample_freq``
    then has no effect; ``rollout_buffer_class`` / ``rollout_buffer_kwargs`` must be left unset (the
    buffer is the episode buffer); ``stats_window_size``, ``tensorboard_log``, ``monitor_wrapper``,
    ``supported_action_spaces`` and SB3 1.x's ``create_eval_env`` steer SB3's own logging, env
    wrapping and checks, which the trainer replaces; ``policy_kwargs``, ``verbose``, ``seed``,
    ``device``, ``_init_setup_model`` as in SB3; ``tracker`` (RL4LMs') becomes ``self._tracker``
    when the user's constructor passes it on instead of keeping it.
    """

    supports_multiprocess = False
    _text_arguments: Dict[str, Any]

    def __init__(self, policy: Type[LMActorCriticPolicy], env: TextGenEnv, learning_rate: Union[float, Callable],
                 n_steps: int, gamma: float = 0.99, gae_lambda: float = 0.95, ent_coef: float = 0.0,
                 vf_coef: float = 0.5, max_grad_norm: float = 0.5, use_sde: bool = False, sde_sample_freq: int = -1,
                 rollout_buffer_class: Optional[type] = None, rollout_buffer_kwargs: Optional[Dict[str, Any]] = None,
                 stats_window_size: int = 100, tensorboard_log: Optional[str] = None, monitor_wrapper: bool = True,
                 policy_kwargs: Optional[Dict[str, Any]] = None, verbose: int = 0, seed: Optional[int] = None,
                 device: str = "auto", _init_setup_model: bool = True, supported_action_spaces: Any = None,
                 create_eval_env: bool = False, tracker: Optional[TrainingInfoTracker] = None) -> None:
        if use_sde:
            raise ValueError("alg.args.use_sde must be false: state-dependent exploration has no meaning for "
                             "token sampling")
        if rollout_buffer_class is not None or rollout_buffer_kwargs:
            raise ValueError("rollout_buffer_class / rollout_buffer_kwargs cannot be set: rollouts go into the "
                             "episode buffer, whose get() serves SB3-style transitions")
        if callable(learning_rate):
            learning_rate = float(learning_rate(1.0))
        if tracker is not None:  # a constructor that passes everything on (RL4LMs' ``**args`` form)
            self._tracker = tracker
        super().__init__(policy=policy, env=env, learning_rate=learning_rate, n_steps=n_steps, gamma=gamma,
                         gae_lambda=gae_lambda, ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                         normalize_advantage=getattr(self, "normalize_advantage", True),
                         policy_kwargs=policy_kwargs, verbose=verbose, seed=seed, device=device,
                         _init_setup_model=_init_setup_model, **self._text_arguments)

    @property
    def whiten_advantages_in_buffer(self) -> bool:
        return False

    learn = OnPolicyAlgorithm.learn
    """SB3's own ``learn`` loop, which such ``train()`` methods expect: it sets up SB3's logger and
    ``_current_progress_remaining`` (and runs the user's ``learn`` override first, if any)."""

    def rollout_and_update(self) -> None:
        """Through ``learn`` (one rollout, then the user's ``train()``); what ``train()`` recorded in
        SB3's logger becomes the iteration's training statistics."""
        self.train_stats = {}
        self.learn(total_timesteps=self.tokens_per_rollout, reset_num_timesteps=False)
        recorded = {key: float(value) for key, value in self.logger.name_to_value.items()
                    if isinstance(value, (int, float))}
        self.logger.dump(self.num_timesteps)
        self.train_stats = {**recorded, **self.train_stats}


def _init(self: Any, policy: Type[LMActorCriticPolicy], env: TextGenEnv, kl_controller: KLController,
          n_envs: int = 1, policy_kwargs: Optional[Dict[str, Any]] = None, seed: Optional[int] = None,
          device: str = "auto", **args: Any) -> None:
    """The wrapper's constructor: keeps what the trainer supplies for the text algorithm, then
    calls the user's constructor with RL4LMs' arguments (those it accepts)."""
    user_class = type(self).__mro__[1]
    self._text_arguments = {"kl_controller": kl_controller, "n_envs": n_envs}
    offered = {"policy": policy, "env": env, "policy_kwargs": policy_kwargs, "seed": seed, "device": device,
               "tracker": TrainingInfoTracker(self)}
    parameters = inspect.signature(user_class.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    user_class.__init__(self, **{k: v for k, v in offered.items() if takes_any or k in parameters}, **args)


@lru_cache(maxsize=None)
def text_algorithm(cls: type) -> type:
    """The class the trainer builds for an RL4LMs-style algorithm ``cls`` (see the module docstring)."""
    return type(cls.__name__, (cls, SB3AlgorithmAdapter), {"__init__": _init, "__module__": cls.__module__,
                                                           "__doc__": cls.__doc__})
