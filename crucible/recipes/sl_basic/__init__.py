"""``sl_basic``: supervised fine-tuning on conversations, as a workflow of reusable stages.

    load_dataset, init_session, build_dataset, evaluate_initial
    for each epoch:
        for each batch:
            forward_backward, await_fb, optim_step, await_optim, log_step_metrics,
            evaluate (every eval_every steps), checkpoint (every save_every steps)
        end_epoch
    save_final, final_evaluate, register_model, cleanup

Pipelining lives in the stages, as in tinker-cookbook's submit-ahead loop: ``forward_backward``
and ``optim_step`` only submit and leave their futures in the state; ``await_fb`` and
``await_optim`` collect the *previous* step's results. So when the loop waits for step s-1,
step s's work is already queued at the backend and the backend never idles for a round trip.
Stages that need the weights of the current step (checkpoint, evaluate, save_final) first
drain the pipeline, so a checkpoint at step s is only written once every metric up to s is
durable: a resumed run drops the records after s and repeats nothing.

Adapters (ports): ``training_client`` (a TrainingBackend) and ``dataset_store`` are required;
``metrics_store``, ``checkpoint_store`` (a CheckpointManagerClient), ``model_registry`` (a
ModelRegistryClient), ``evaluator`` and ``blob_store`` are optional.
"""

from crucible.recipes.sl_basic._reporting import record_metrics, summary_metrics
from crucible.recipes.sl_basic._state import MetricHistory, SLState
from crucible.recipes.sl_basic._workflow import SL_BASIC, sl_basic_workflow

__all__ = [
    "SL_BASIC",
    "MetricHistory",
    "SLState",
    "record_metrics",
    "sl_basic_workflow",
    "summary_metrics",
]
