"""The context window of multi-turn calls: what the prompt spec keeps of a conversation, which tools it lists, which
calls it refuses, what it saves in tokens, and that training and serving build the same prompt from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.core.schema import CallRecord, ChatMessage, ToolCall
from components.finetune.train import to_training_example
from components.slm import build_messages, render_prompt
from components.slm.context_window import cut_text, split_turns, window_messages
from components.slm.prompt import TOOL_RESULT_PREFIX
from components.slm.prompt_pruning import (
    PruningSettings,
    derive_prompt_spec,
    distinct_descriptions,
    first_sentence,
    load_prompt_spec,
    load_prompt_transform,
    prompt_token_report,
    save_prompt_spec,
    spec_accepts,
    spec_refusal,
)

SYSTEM = "You are a file system agent. Use the tools."


def tool(name: str, description: str, **parameters: str) -> dict:
    properties = {key: {"type": kind} for key, kind in parameters.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": list(parameters)},
        },
    }


LS = tool("ls", "List the current directory.")
CD = tool("cd", "Change directory.", folder="string")
CAT = tool("cat", "Print a file.", file_name="string")
RM = tool("rm", "Delete a file.", file_name="string")
POST = tool("post_tweet", "Post a tweet.", content="string")
FILE_TOOLS = [LS, CD, CAT, RM]


def call(name: str, index: int, **arguments: str) -> ChatMessage:
    return ChatMessage(
        role="assistant", tool_calls=[ToolCall(id=f"c{index}", name=name, arguments=json.dumps(arguments))]
    )


def result(index: int, content: str) -> ChatMessage:
    return ChatMessage(role="tool", tool_call_id=f"c{index}", content=content)


def conversation_record(index: int, folder: str, listing: str, tools: list[dict] | None = None) -> CallRecord:
    """The third turn of a file-system conversation, one call and its result into it; the answer is the next call."""
    messages = [
        ChatMessage(role="system", content=SYSTEM),
        ChatMessage(role="user", content="Where am I?"),  # turn 1
        call("ls", 1),
        result(1, '{"current_directory_content": ["docs", "notes.txt"]}'),
        ChatMessage(role="assistant", content="You are in your home folder."),
        ChatMessage(role="user", content="Show me notes.txt."),  # turn 2
        call("cat", 2, file_name="notes.txt"),
        result(2, json.dumps({"file_content": "a very long note " * 40})),
        ChatMessage(role="assistant", content="Here it is."),
        ChatMessage(role="user", content=f"Go into {folder} and list it."),  # turn 3: the current one
        call("cd", 3, folder=folder),
        result(3, json.dumps({"current_working_directory": folder, "listing": listing})),
    ]
    return CallRecord(
        record_id=f"conv{index}",
        messages=messages,
        tools=FILE_TOOLS if tools is None else tools,
        response=call("ls", 4),
    )


@pytest.fixture
def conversations() -> list[CallRecord]:
    folders = ["docs", "src", "tmp", "music", "photos", "work"]
    # Two tool sets (rm offered in every other conversation), so the listing is not dropped as one fixed set.
    return [
        conversation_record(i, folder, "x" * (50 + 200 * i), tools=FILE_TOOLS if i % 2 else FILE_TOOLS[:3])
        for i, folder in enumerate(folders)
    ]


def window_spec(conversations: list[CallRecord], **settings: object):
    return derive_prompt_spec(conversations, PruningSettings(**settings))


# ------------------------------------------------------------------------------------------ the window


def test_turns_start_at_each_user_message_and_skip_system_messages(conversations: list[CallRecord]) -> None:
    turns = split_turns(conversations[0].messages)
    assert [turn[0].content for turn in turns] == ["Where am I?", "Show me notes.txt.", "Go into docs and list it."]
    assert [len(turn) for turn in turns] == [4, 4, 3]
    lead = split_turns([ChatMessage(role="system", content="s"), result(9, "r"), ChatMessage(role="user", content="u")])
    assert [[m.role for m in turn] for turn in lead] == [["tool"], ["user"]]


def test_the_window_keeps_the_current_turn_whole_and_the_last_k_earlier_turns(conversations: list[CallRecord]) -> None:
    record = conversations[0]
    current = window_messages(record.messages, history_turns=0, max_tool_result_chars=None)
    assert current == record.messages[9:]  # the current user turn and the call and result after it
    one_back = window_messages(record.messages, history_turns=1, max_tool_result_chars=None)
    assert one_back == record.messages[5:]
    assert window_messages(record.messages, None, None) == record.messages[1:]  # no limit: all but the system

    spec = window_spec(conversations, history_turns=0, max_tool_result_chars=None, digest_older_turns=False)
    prompt = build_messages(record, spec)
    assert [m["content"] for m in prompt[1:3]] == [
        "Go into docs and list it.",
        '<tool_call>{"name": "cd", "arguments": {"folder": "docs"}}</tool_call>',
    ]
    assert len(prompt) == 4 and "Where am I?" not in json.dumps(prompt)


def test_older_turns_become_the_values_they_introduced_and_keep_the_answers_values(
    conversations: list[CallRecord],
) -> None:
    from components.slm.context_window import DIGEST_PREFIX, request_values
    from components.slm.value_recall import value_recall

    # The answer goes back two turns: the file turn 2 showed, not named in the current turn.
    records = [
        record.model_copy(update={"response": call("cat", 4, file_name="notes.txt")}) for record in conversations
    ]
    digested = window_spec(records, history_turns=0, max_tool_result_chars=None)
    dropped = window_spec(records, history_turns=0, max_tool_result_chars=None, digest_older_turns=False)
    prompt = build_messages(records[0], digested)
    # Turns 1 and 2 as one line: what they exchanged ("docs" is left out: the current turn states it; the long
    # file content is prose, not a value), then the current turn whole.
    assert prompt[1]["content"] == DIGEST_PREFIX + "notes.txt"
    assert prompt[2]["content"] == "Go into docs and list it." and "Where am I?" not in json.dumps(prompt)
    assert value_recall(records, digested).recall == 1.0 and value_recall(records, dropped).recall == 0.0
    assert value_recall(records, None).recall == 1.0  # the full prompt keeps what it states
    assert request_values("Buy 50 shares of 'Zeta Corp' at $12.5 and mail a.b@x.com. Then ask Ann Lee.") == [
        "50",
        "Zeta Corp",
        "12.5",
        "a.b@x.com",
        "Ann Lee",
    ]


def test_the_spec_is_fitted_to_the_window_with_leaner_recipes(conversations: list[CallRecord]) -> None:
    from transformers import AutoTokenizer

    from components.slm import prepare_model
    from components.slm.prompt_pruning import FITTING_STEPS, call_tokens
    from tests.support.tiny_models import SMOLLM2

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(SMOLLM2))
    settings = PruningSettings(max_tool_result_chars=None, only_called_tools=False)  # every offered tool listed
    roomy = derive_prompt_spec(conversations, settings, tokenizer, max_length=100_000)
    assert roomy.fitting_step == 0 and roomy.history_turns == 1 and roomy.tools == "signatures"
    # A window only the leanest recipe fits: tools by name, the current turn only.
    leanest = derive_prompt_spec(
        conversations, settings.model_copy(update=FITTING_STEPS[-1]), tokenizer, max_length=100_000
    )
    tight = max(call_tokens(record, tokenizer, leanest) for record in conversations)
    fitted = derive_prompt_spec(conversations, settings, tokenizer, max_length=tight)
    assert fitted.fitting_step == len(FITTING_STEPS) and fitted.tools == "names" and fitted.history_turns == 0
    assert build_messages(conversations[0], fitted)[0]["content"] == "Tools: ls, cd, cat"
    assert all(call_tokens(record, tokenizer, fitted) <= tight for record in conversations)
    assert derive_prompt_spec(conversations, settings).fitting_step == 0  # no tokenizer: as configured


def test_long_tool_results_are_cut_and_marked(conversations: list[CallRecord]) -> None:
    assert cut_text("abcdef", 4) == "abcd [... 2 more characters cut]"
    assert cut_text("abcd", 4) == "abcd" and cut_text("abcdef", None) == "abcdef"

    spec = window_spec(conversations, history_turns=1, max_tool_result_chars=60)
    long_record = conversations[-1]
    results = [m["content"] for m in build_messages(long_record, spec) if m["content"].startswith(TOOL_RESULT_PREFIX)]
    full = [m.content for m in long_record.messages if m.role == "tool"][1:]  # turn 2's and turn 3's results
    assert len(results) == 2
    for shown, original in zip(results, full, strict=True):
        assert shown == TOOL_RESULT_PREFIX + original[:60] + f" [... {len(original) - 60} more characters cut]"
    short = result(1, "ok")
    assert window_messages([ChatMessage(role="user", content="u"), short], 0, 60)[1] == short  # fits: unchanged


# ------------------------------------------------------------------------------------------ tools


def test_only_the_tools_the_cluster_calls_are_listed(conversations: list[CallRecord]) -> None:
    spec = window_spec(conversations, tool_descriptions=False)
    assert spec.known_tools == ["cat", "cd", "ls", "rm"] and spec.called_tools == ["ls"]
    assert spec.tools == "bare_signatures"
    system = build_messages(conversations[1], spec)[0]["content"]
    assert system == "ls()"  # cd, cat (called only in the history) and rm are offered but never the answer

    everything = window_spec(conversations, tool_descriptions=False, only_called_tools=False)
    assert build_messages(conversations[1], everything)[0]["content"].splitlines() == [
        "ls()",
        "cd(folder)",
        "cat(file_name)",
        "rm(file_name)",
    ]


def test_a_request_offering_a_tool_unknown_to_the_cluster_is_refused(conversations: list[CallRecord]) -> None:
    spec = window_spec(conversations)
    assert all(spec_accepts(spec, record) for record in conversations)
    with_twitter = conversation_record(9, "docs", "x", tools=[*FILE_TOOLS, POST])
    assert not spec_accepts(spec, with_twitter)
    assert spec_refusal(spec, with_twitter) == "1 tool(s) unknown to the cluster: post_tweet"
    # Were it built anyway, the unknown tool is listed: nothing says the cluster does not need it.
    assert "post_tweet(content)" in build_messages(with_twitter, spec)[0]["content"]
    fewer = conversation_record(9, "docs", "x", tools=[LS, CD])
    assert spec_accepts(spec, fewer)  # offering fewer tools needs nothing the model does not know


def test_a_spec_written_before_the_window_still_builds_the_whole_conversation(
    conversations: list[CallRecord], tmp_path: Path
) -> None:
    version_1 = {"version": 1, "pruned": True, "drop_system_prompt": False, "tools": "signatures"}
    (tmp_path / "prompt_spec.json").write_text(json.dumps(version_1))
    old = load_prompt_spec(tmp_path)
    assert old.history_turns is None and old.known_tools is None
    prompt = build_messages(conversations[1], old)
    assert len(prompt) == 12  # the system message and all 11 of the three turns
    assert prompt[0]["content"].splitlines()[1:] == [
        "ls() - List the current directory.",
        "cd(folder: string) - Change directory.",
        "cat(file_name: string) - Print a file.",
        "rm(file_name: string) - Delete a file.",
    ]
    assert spec_accepts(old, conversation_record(9, "docs", "x", tools=[*FILE_TOOLS, POST]))


# ------------------------------------------------------------------------------------------ tokens, S5 = S6


def test_token_report_counts_before_and_after_and_calls_over_max_length(
    conversations: list[CallRecord], tiny_model_dir: str
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = window_spec(conversations, history_turns=0, max_tool_result_chars=100)
    report = prompt_token_report(conversations, tokenizer, spec, max_length=300)
    before, after = report["before"], report["after"]
    assert report["calls"] == 6 and report["max_length"] == 300
    assert after["max"] < 300 < before["median"]  # the window fits every call that the full prompt did not
    assert before["over_max_length"] == 6 and after["over_max_length"] == 0
    assert before["mean"] > 3 * after["mean"]
    tight = prompt_token_report(conversations, tokenizer, spec, max_length=after["median"])
    assert 0 < tight["after"]["over_max_length"] < 6  # the over-long ones are counted, not hidden
    assert prompt_token_report([], tokenizer, spec)["after"] is None


def test_training_and_serving_build_the_same_prompt_from_the_saved_spec(
    conversations: list[CallRecord], tiny_model_dir: str, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = window_spec(conversations, history_turns=1, max_tool_result_chars=80)
    save_prompt_spec(spec, tmp_path)
    served = load_prompt_spec(tmp_path)
    assert served == spec
    record = conversation_record(7, "src", "y" * 500)  # a call the spec was not derived from
    trained = to_training_example(record, spec)["prompt"]  # S5
    assert load_prompt_transform(tmp_path)(record) == trained  # S6 and the registered pyfunc
    served_text = render_prompt(tokenizer, record, served)  # generation: S4, S6, the router's SLMPool
    assert served_text == tokenizer.apply_chat_template(trained, tokenize=False, add_generation_prompt=True)
    cut = len(record.messages[-1].content) - 80
    assert f"[... {cut} more characters cut]" in served_text and "Where am I?" not in served_text


def test_descriptions_lose_their_shared_opening_and_keep_their_first_sentence() -> None:
    preamble = "This tool belongs to the file system, which lets users manage files. Tool description: "
    tools = [
        tool("ls", preamble + "List the current directory. Hidden files too."),
        tool("cd", preamble + "Change directory."),
        tool("echo", "Write text. " + "Very long. " * 3),
    ]
    assert distinct_descriptions(tools) == {
        "ls": "List the current directory. Hidden files too.",
        "cd": "Change directory.",
        "echo": tools[2]["function"]["description"].strip(),  # it shares no opening with another tool
    }
    assert distinct_descriptions([tool("a", "Same start."), tool("b", "Same start. More.")])["a"] == "Same start."
    assert first_sentence("List files. Hidden too.", 100) == "List files."
    assert first_sentence("A sentence far too long to fit", 12) == "A sentence..."
    assert first_sentence("List files. Hidden too.", None) == "List files. Hidden too."

    record = CallRecord(
        record_id="d",
        messages=[ChatMessage(role="user", content="Where am I?")],
        tools=tools,
        response=call("ls", 1),
    )
    spec = derive_prompt_spec([record], PruningSettings(min_records=1, drop_single_tool_set=False))
    assert build_messages(record, spec)[0]["content"] == "ls() - List the current directory."
    full = derive_prompt_spec(
        [record],
        PruningSettings(
            min_records=1,
            drop_single_tool_set=False,
            drop_shared_description_openings=False,
            max_tool_description_chars=None,
        ),
    )
    assert (
        build_messages(record, full)[0]["content"]
        == "ls() - " + preamble + "List the current directory. Hidden files too."
    )
