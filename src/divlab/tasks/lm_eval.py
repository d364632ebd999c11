"""The evaluation half of `LMTask` (task=lm, and seqmatch through it): greedy exact match on arithmetic,
continuations of text windows with their metrics, and samples.txt after fitting. A mixin: it reads the
task's model, tokenizer, sampling settings and `track`, and holds no state of its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from divlab.tasks.seqmatch_sampler import sample_with_backspace


class LMEvaluation:
    @torch.no_grad()
    def arithmetic_accuracy(self, batch: dict, stage: str) -> None:
        """Greedy exact match from clean prompts and (test only) from OOD prefixes; <bs> rates."""
        tok = self.tokenizer
        answers = [
            self.answer_ids(row, p, n)
            for row, p, n in zip(
                batch["tokens"].tolist(), batch["prompt_len"].tolist(), batch["length"].tolist()
            )
        ]
        max_answer = max(len(a) for a in answers)
        runs = [("clean", batch["tokens"], batch["prompt_len"])]
        if stage == "test":
            runs.append(("ood", batch["ood_tokens"], batch["ood_len"]))
        was_training = self.model.training
        self.model.eval()
        for kind, inputs, input_len in runs:
            width = int(input_len.max())
            rollout = sample_with_backspace(
                self.model,
                inputs[:, :width],
                input_len=input_len,
                prompt_len=batch["prompt_len"],
                max_steps=2 * (max_answer + 1) + 2,
                bs_id=tok.bs_id,
                eos_id=tok.eos_id,
                pad_id=tok.pad_id,
                never=(tok.pad_id, tok.bos_id),
                temperature=0.0,
            )
            correct = torch.tensor(
                [
                    float(ended and state == answer)
                    for ended, state, answer in zip(rollout.ended.tolist(), rollout.states, answers)
                ],
                device=self.device,
            )
            self.track(f"{stage}/acc_{kind}", correct.mean(), len(correct), train=False)
            suffix = "" if kind == "clean" else "_ood"
            self.track(
                f"{stage}/bs_rate{suffix}",
                rollout.n_backspace.sum() / rollout.n_actions.sum().clamp(min=1),
                rollout.n_actions.sum(),
                train=False,
            )
        self.model.train(was_training)

    @torch.no_grad()
    def collect_text(self, batch: dict) -> None:
        """Continue the first text_prompt_tokens tokens of the batch's windows (up to text_windows per test
        epoch) with the backspace-aware sampler; keep prompts, continuations (backspaces applied, at most
        text_new_tokens) and the real next tokens for `text_metrics`."""
        store, tok = self._text, self.tokenizer
        tokens = batch["tokens"][: self.text_windows - len(store["prompts"])]
        if len(tokens) == 0:
            return
        p, n = self.text_prompt_tokens, self.text_new_tokens
        prompts, width = tokens[:, :p], torch.full((len(tokens),), p, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(
            self.seed * 1_000_003 + len(store["prompts"])
        )
        was_training = self.model.training
        self.model.eval()
        rollout = sample_with_backspace(  # a few spare actions, so rows with <bs> still reach n tokens
            self.model,
            prompts,
            input_len=width,
            prompt_len=width,
            max_steps=n * 5 // 4,
            bs_id=tok.bs_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            never=(tok.pad_id, tok.bos_id, tok.eos_id),
            temperature=self.temperature,
            top_k=self.top_k,
            generator=generator,
        )
        self.model.train(was_training)
        store["prompts"] += prompts.tolist()
        store["generated"] += [state[:n] for state in rollout.states]
        store["real"] += tokens[:, p : p + n].tolist()
        actions = rollout.n_actions.sum()
        self.track("test/bs_rate", rollout.n_backspace.sum() / actions.clamp(min=1), actions, train=False)

    def text_metrics(self) -> None:
        """distinct-n, repetition and (with a judge) judge perplexity and MAUVE-style score of the test
        epoch's continuations (divlab.metrics.judge.text_report), logged as test/*."""
        from divlab.metrics.judge import text_report

        store = self._text
        if not store or not store["prompts"]:
            return
        judge = self.judge.get() if self.judge is not None else None
        report = text_report(
            store["prompts"],
            store["generated"],
            store["real"],
            judge=judge,
            pad_id=self.tokenizer.pad_id,
            mauve_clusters=self.mauve_clusters,
            seed=self.seed,
        )
        for name, value in report.items():
            self.track(f"test/{name}", torch.tensor(value), len(store["prompts"]), train=False)
        self._text = None

    def answer_ids(self, row: list[int], prompt_len: int, length: int) -> list[int]:
        """The answer's content ids of a clean data row (no <eos>)."""
        return [t for t in row[prompt_len:length] if t != self.tokenizer.eos_id]

    # ------------------------------------------------------------------ samples
    def on_fit_end(self) -> None:
        if self.global_rank != 0 or self.n_samples < 1 or not self.run_dir:
            return
        dataset = self.trainer.datamodule.dataset("val")
        items = [dataset[i] for i in range(min(self.n_samples, len(dataset)))]
        # arithmetic: the prompts; text: the first half (at most 16 tokens) of a window
        prompt_len = min(int(it["prompt_len"]) for it in items)
        if prompt_len <= 1:
            prompt_len = max(1, min(16, min(int(it["length"]) for it in items) // 2))
        prompts = torch.stack([it["tokens"][:prompt_len] for it in items]).to(self.device)
        was_training = self.model.training
        self.model.eval()
        if hasattr(self.model, "new_kv_cache"):  # a divlab GPT
            out = self.model.generate(
                prompts,
                max_new_tokens=self.sample_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                eos_id=self.tokenizer.eos_id,
                generator=torch.Generator(device=self.device).manual_seed(self.seed),
            )
        else:  # an HFCausalLM: HF's generate (seeded by torch's global seed)
            torch.manual_seed(self.seed)
            out = torch.cat(
                [
                    prompts,
                    self.model.generate(
                        prompts,
                        torch.ones_like(prompts),
                        top_k=self.top_k,
                        max_new_tokens=self.sample_tokens,
                        temperature=self.temperature,
                    ),
                ],
                dim=1,
            )
        self.model.train(was_training)
        lines = [f"temperature={self.temperature} top_k={self.top_k}\n"]
        for i, (p, o) in enumerate(zip(prompts.tolist(), out.tolist())):
            lines.append(
                f"--- sample {i}, prompt {self.tokenizer.decode(p)!r}\n"
                f"{self.tokenizer.decode(o, apply_backspace=True)}\n"
            )
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.run_dir) / "samples.txt").write_text("".join(lines))
