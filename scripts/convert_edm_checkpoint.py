#!/usr/bin/env python
"""Convert an NVlabs/edm network pickle (`edm-*.pkl`) to a divlab safetensors file, once.

Run it where NVlabs' code is importable (a clone of github.com/NVlabs/edm and its environment), with
divlab installed too; divlab itself never unpickles these files, because unpickling runs code:

    python scripts/convert_edm_checkpoint.py --edm-repo ~/edm \
        --pkl edm-cifar10-32x32-cond-vp.pkl --out checkpoints/edm-cifar10-32x32-cond-vp.safetensors

It takes the EMA network (`ema`), keeps its raw U-Net (`ema.model`, EDMPrecond removed; divlab wraps
it in divlab.models.edm.EDMPrecond with the same sigma_data), renames the tensors to divlab's names
(divlab.models.edm_checkpoint.convert_reference_state), writes them with the architecture options and
sigma_data as metadata, reloads the file into divlab's network through the checking loader and compares
both networks' outputs on random inputs (it stops if they differ by more than --atol). Then set
`teacher.model.path` (conf/teacher/edm_cifar10_cond.yaml etc.) to the written file.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--edm-repo", required=True, type=Path, help="clone of NVlabs/edm (for dnnlib, torch_utils)"
    )
    p.add_argument("--pkl", required=True, help="network pickle: a local path (download it first)")
    p.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    p.add_argument("--atol", type=float, default=1e-4, help="largest output difference accepted in the check")
    args = p.parse_args(argv)

    from hydra.utils import get_class

    from divlab.models.edm_checkpoint import (
        ARCHITECTURES,
        convert_reference_state,
        load_edm_weights,
        reference_kwargs,
        save_edm_network,
    )

    sys.path.insert(0, str(args.edm_repo.resolve()))  # the pickle names dnnlib / torch_utils classes
    with open(args.pkl, "rb") as f:
        ref = pickle.load(f)["ema"].to(torch.float32).eval()  # NVlabs' own file, unpickled here only
    model_type = type(ref.model).__name__
    init = {**dict(ref.init_kwargs), **dict(ref.model.init_kwargs)}
    kwargs = reference_kwargs(model_type, init)
    net = get_class(ARCHITECTURES[model_type])(**kwargs).eval()
    state = convert_reference_state(ref.model.state_dict())
    save_edm_network(
        net, args.out, sigma_data=float(ref.sigma_data), source=str(args.pkl), kwargs=kwargs, state=state
    )
    load_edm_weights(net, args.out, key="--out")

    gen = torch.Generator().manual_seed(0)
    res, ch = kwargs["img_resolution"], kwargs["in_channels"]
    x = torch.randn(4, ch, res, res, generator=gen)
    sigma = torch.tensor([0.01, 0.5, 5.0, 80.0])
    labels = None
    if kwargs.get("label_dim"):
        labels = torch.nn.functional.one_hot(
            torch.arange(4) % kwargs["label_dim"], kwargs["label_dim"]
        ).float()
    c_noise = sigma.log() / 4  # EDM's c_noise (Table 1)
    with torch.no_grad():
        want = ref.model(x, c_noise, class_labels=labels)
        got = net(x, c_noise, class_labels=labels)
    diff = float((want - got).abs().max())
    print(
        f"{model_type} {kwargs} -> {args.out}: {sum(t.numel() for t in state.values()):,} parameters, "
        f"max |reference - divlab| = {diff:.2e}"
    )
    if diff > args.atol:
        print(
            f"outputs differ by {diff:.2e} > --atol {args.atol}; the file was written but should not be used"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
