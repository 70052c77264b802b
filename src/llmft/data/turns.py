"""Conversations: the role names of the common chat formats, and the shape every conversation record holds.

A conversation is `[{"role": "system"|"user"|"assistant", "content": str}, ...]`: at most one system turn, and only
first; then user and assistant alternate, starting with the user and ending with the assistant; no turn is empty.
`problem(messages)` names the first way a list breaks that (the chat source rejects with it, and the cleaning stage
checks it again after normalising the text).
"""
from __future__ import annotations

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"

# Lower-cased role names of OpenAI/HF `messages`, ShareGPT `from` (human/gpt), OpenAssistant (prompter), and the names
# other chat exports use for the model's side.
ROLE_ALIASES = {
    "system": SYSTEM, "developer": SYSTEM,
    "user": USER, "human": USER, "prompter": USER,
    "assistant": ASSISTANT, "gpt": ASSISTANT, "bot": ASSISTANT, "model": ASSISTANT, "chatgpt": ASSISTANT,
    "ai": ASSISTANT, "bard": ASSISTANT, "claude": ASSISTANT, "gpt-4": ASSISTANT, "gpt4": ASSISTANT,
}

NO_TURNS = "no turns"
NO_ASSISTANT = "no assistant turn"
EMPTY_CONTENT = "empty content"
NOT_ALTERNATING = "turns do not alternate"
SYSTEM_NOT_FIRST = "system turn not first"
ENDS_WITHOUT_ASSISTANT = "last turn is not the assistant's"


def canonical_role(name) -> str | None:
    """'system', 'user' or 'assistant' for a known role name in any case; None otherwise."""
    return ROLE_ALIASES.get(name.strip().lower()) if isinstance(name, str) else None


def problem(messages: list[dict]) -> tuple[str, int] | None:
    """(reason, index of the offending turn) for the first problem of a conversation with canonical roles, or None.
    Unknown roles are the reader's to report (it knows the raw name)."""
    if not messages:
        return NO_TURNS, 0
    expected = USER
    for index, turn in enumerate(messages):
        role = turn["role"]
        if not turn["content"]:
            return EMPTY_CONTENT, index
        if role == SYSTEM:
            if index != 0:
                return SYSTEM_NOT_FIRST, index
            continue
        if role != expected:
            return NOT_ALTERNATING, index
        expected = ASSISTANT if role == USER else USER
    if not any(turn["role"] == ASSISTANT for turn in messages):
        return NO_ASSISTANT, len(messages) - 1
    if messages[-1]["role"] != ASSISTANT:
        return ENDS_WITHOUT_ASSISTANT, len(messages) - 1
    return None


def system_prompt(messages: list[dict]) -> str:
    return messages[0]["content"] if messages and messages[0]["role"] == SYSTEM else ""


def single_turn_view(messages: list[dict]) -> tuple[str, str]:
    """(instruction, output) of a well-formed conversation: the first user turn and the last assistant turn."""
    first_user = next(turn["content"] for turn in messages if turn["role"] == USER)
    return first_user, messages[-1]["content"]


def dialogue(messages: list[dict]) -> list[str]:
    """The contents of the user and assistant turns, in order (the system prompt left out)."""
    return [turn["content"] for turn in messages if turn["role"] != SYSTEM]
