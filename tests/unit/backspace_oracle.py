"""The tests' reference for what a row with backspaces means, written out by hand (no divlab code)."""


def apply_backspace(row: list[int], prompt_len: int, *, bs_id: int) -> list[int]:
    """The state a row reaches: each `bs_id` after the prompt deletes the last token still alive,
    never a prompt token (a `<bs>` on an empty continuation is a no-op)."""
    state = []
    for i, t in enumerate(row):
        if t == bs_id and i >= prompt_len:
            if len(state) > prompt_len:
                state.pop()
        else:
            state.append(t)
    return state
