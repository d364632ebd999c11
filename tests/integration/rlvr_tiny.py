"""The tiny task=rlvr overrides that the rlvr run tests share (a 1-epoch start, 4 x 4 samples per round)."""

TINY = [
    "task=rlvr",
    "data.datamodule.n_train=96",
    "data.datamodule.n_val=16",
    "data.datamodule.n_test=16",
    "data.datamodule.batch_size=16",
    "rlvr.init_train.max_epochs=1",
    "rlvr.group_size=4",
    "rlvr.prompts_per_step=4",
    "rlvr.updates_per_batch=2",
    "rlvr.max_new_tokens=5",
    "rlvr.rehearsal_size=12",  # unused under rlvr.split (D_pef's correct samples are the rehearsal set)
    "rlvr.rehearsal_batch=6",
    "rlvr.n_eval_samples=8",
    "rlvr.pass_k=[1,4,8]",
    "optimizer.lr=0.001",
    "callbacks=none",
]
