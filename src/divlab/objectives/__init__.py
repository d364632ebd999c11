"""Paper objectives, one file per paper, each citing the equations it implements; built on
divlab.divergences and imported by the tasks (divlab.tasks) that wire them to a model and data.

    fdistill.py   one-step diffusion distillation: f-distill, DMD, Diff-Instruct, SiD, Uni-Instruct
    seqmatch.py   SequenceMatch (chi^2-mixture occupancy divergence, backspace action)
    superdiff.py  SuperDiff (superposition of diffusion models, Ito density estimator)

This package imports nothing at load time; import the module you need.
"""
