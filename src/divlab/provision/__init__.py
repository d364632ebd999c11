"""Provisioning of trained-once models (teachers, judges, start models): loaded from a checkpoint,
taken as they are (`pretrained`), or trained once by the builder their recipe names and cached.
Provisioning knows no task module: the recipe's `train.builder` names the function that builds the
network and the LightningModule that trains it. This package imports nothing at load time."""
