#!/usr/bin/env python3
"""The official `openai` Python client against `olmort serve`, unmodified.

    python3 tools/check_openai_client.py

Packs the chat fixture (tests/fixtures/chat/olmo2: random weights, the dolma2
vocabulary, OLMo-2's chat template), starts `olmort serve` on a free port with an API
key, and through `openai.OpenAI(base_url=..., api_key=...)`: lists the models; asks for
completions and chat completions, whole and streamed (greedy: the streamed text must
equal the whole one; `stream_options.include_usage`: usage on the last chunk); checks
usage counts, max_tokens / max_completion_tokens, stop strings, seeded sampling (same
seed, same text) and the errors the client raises (wrong key: AuthenticationError;
n=17, an unknown role, a prompt over the context: BadRequestError), n choices, log-probabilities
in the client's types, penalties, JSON mode, a JSON schema and `chat.completions.parse` with
a nested Pydantic model ($defs and $ref), and the Responses API (`responses.create`, whole and
streamed). Then serves
tests/fixtures/chat/olmo3_tools (OLMo-3's tool-call template) and checks tool calls in the
client's types: a required call and a named one, whole and streamed (the streamed deltas
add up to the whole answer's calls), and the call and its result sent back as the next
turn; and a thinking model's `reasoning_content`, whole and streamed. Exits non-zero on
the first failure.
"""

import json
import sys
import tempfile
from pathlib import Path

import openai
import pydantic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import ROOT, Server, pack  # noqa: E402


class Trip(pydantic.BaseModel):
    city: str
    days: int


class Plan(pydantic.BaseModel):
    trip: Trip
    note: str | None = None


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        blob = pack(ROOT / "tests/fixtures/chat/olmo2", Path(tmp) / "chat-olmo2.bin")
        with Server(blob, "--api-key", "sesame", "--parallel", "2", "--ctx-size", "128") as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="sesame", max_retries=0)
            models = client.models.list()
            name = models.data[0].id
            check(name == "chat-olmo2", f"models.list names the blob ({name})")

            args = dict(model=name, prompt="Once upon a time", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
            whole = client.completions.create(**args)
            text = whole.choices[0].text
            check(whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length",
                  f"completion: 12 tokens, finish length ({text!r})")
            check(whole.usage.total_tokens == whole.usage.prompt_tokens + 12, "completion usage adds up")
            pieces = list(client.completions.create(**args, stream=True))
            streamed = "".join(c.choices[0].text for c in pieces if c.choices)
            check(streamed == text, "streamed completion text equals the whole one")
            check(pieces[-1].choices[0].finish_reason == "length", "the last chunk has the finish reason")

            stop = text[len(text) // 2:][:2]
            cut = client.completions.create(**args, stop=[stop])
            check(cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop",
                  f"stop {stop!r} cuts the text before it")

            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, who are you?"}]
            chat_args = dict(model=name, messages=messages, max_completion_tokens=10, temperature=0, extra_body={"ignore_eos": True})
            chat = client.chat.completions.create(**chat_args)
            reply = chat.choices[0].message.content
            check(chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 10,
                  f"chat: an assistant message of 10 tokens ({reply!r})")
            chunks = list(client.chat.completions.create(**chat_args, stream=True, stream_options={"include_usage": True}))
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            check(streamed == reply, "streamed chat text equals the whole one")
            check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10, "include_usage: usage on the last chunk")
            check(chunks[0].choices[0].delta.role == "assistant", "the first chat chunk carries the role")

            sampled = [client.chat.completions.create(**{**chat_args, "temperature": 0.9, "top_p": 0.9, "seed": 7}).choices[0].message.content
                       for _ in range(2)]
            check(sampled[0] == sampled[1], "the same seed samples the same reply")

            scored = client.chat.completions.create(**chat_args, logprobs=True, top_logprobs=3)
            content = scored.choices[0].logprobs.content
            check(len(content) == 10 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content),
                  "chat logprobs: an entry per token, three alternatives each")
            check("".join(t.token for t in content) == scored.choices[0].message.content, "chat logprobs spell the reply")
            legacy = client.completions.create(**args, logprobs=2)
            check(len(legacy.choices[0].logprobs.token_logprobs) == legacy.usage.completion_tokens,
                  "completion logprobs: one per token")
            # (Random weights rarely repeat a token: the trained model's server test shows
            # the penalties' effect; here the client passes them.)
            penalized = client.completions.create(**{**args, "extra_body": {**args["extra_body"], "repeat_penalty": 1.2, "repeat_last_n": -1}},
                                                  frequency_penalty=1.5, presence_penalty=1.0)
            check(penalized.usage.completion_tokens == 12, "penalties are taken")
            several = client.chat.completions.create(**{**chat_args, "temperature": 0.9, "seed": 3}, n=3)
            check([c.index for c in several.choices] == [0, 1, 2] and several.usage.completion_tokens == 30,
                  "n=3: three chat choices of 10 tokens each")
            scored = client.completions.create(model=name, prompt="Once upon a time", max_tokens=0, echo=True, logprobs=1)
            lp = scored.choices[0].logprobs
            check(scored.choices[0].text == "Once upon a time" and lp.token_logprobs[0] is None
                  and all(v is not None and v <= 0 for v in lp.token_logprobs[1:]),
                  "echo with max_tokens 0 scores the prompt (the first token None)")
            # JSON mode; the random weights are pulled toward '"' (id 1) and '}' (id 92) so
            # that the object closes within the context.
            shaped = client.chat.completions.create(model=name, messages=messages, max_tokens=100, temperature=0,
                                                    logit_bias={"1": 30, "92": 25}, response_format={"type": "json_object"})
            check(shaped.choices[0].finish_reason == "stop" and isinstance(json.loads(shaped.choices[0].message.content), dict),
                  f"response_format json_object: a JSON object ({shaped.choices[0].message.content!r})")
            schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                      "required": ["city", "days"], "additionalProperties": False}
            structured = client.chat.completions.create(
                model=name, messages=messages, max_tokens=100, temperature=0, logit_bias={"1": 30, "92": 25, "11": 20},
                response_format={"type": "json_schema", "json_schema": {"name": "trip", "strict": True, "schema": schema}})
            value = json.loads(structured.choices[0].message.content)
            check(list(value) == ["city", "days"] and isinstance(value["city"], str) and isinstance(value["days"], int),
                  f"response_format json_schema: an object of the schema ({structured.choices[0].message.content!r})")
            # The client's own Pydantic path: a nested model becomes $defs and $ref.
            parsed = client.chat.completions.parse(model=name, messages=messages, max_tokens=100, temperature=0,
                                                   logit_bias={"1": 30, "92": 25, "11": 20}, response_format=Plan)
            plan = parsed.choices[0].message.parsed
            check(isinstance(plan, Plan) and isinstance(plan.trip, Trip),
                  f"chat.completions.parse with a nested Pydantic model ({parsed.choices[0].message.content!r})")
            first = client.completions.create(**{**args, "extra_body": {**args["extra_body"], "cache_prompt": True}})
            again = client.completions.create(**{**args, "extra_body": {**args["extra_body"], "cache_prompt": True}})
            check(first.choices[0].text == again.choices[0].text == text, "cache_prompt: the same text")
            check(again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1,
                  "cache_prompt: all but the last prompt token cached (usage.prompt_tokens_details)")

            for what, call, error in [
                ("a wrong API key", lambda: openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0).models.list(),
                 openai.AuthenticationError),
                ("n=17", lambda: client.completions.create(**args, n=17), openai.BadRequestError),
                ("an unknown role", lambda: client.chat.completions.create(model=name, messages=[{"role": "wizard", "content": "x"}]),
                 openai.BadRequestError),
                ("a prompt over the context", lambda: client.completions.create(model=name, prompt=[1] * 200), openai.BadRequestError),
                ("top_logprobs over 20", lambda: client.chat.completions.create(**chat_args, logprobs=True, top_logprobs=21),
                 openai.BadRequestError),
                ("a frequency penalty over 2", lambda: client.completions.create(**args, frequency_penalty=3), openai.BadRequestError),
            ]:
                try:
                    call()
                    check(False, f"{what} is refused")
                except error as e:
                    check(isinstance(e.body, dict) and "message" in e.body, f"{what}: {type(e).__name__} ({e.body['message']})")
            check_responses(client, name, chat_args)
            check(server.alive(), "the server is alive")
        check_tool_calls(Path(tmp))
        check_reasoning(Path(tmp))
    print("all openai client checks passed")


def check_reasoning(tmp):
    """A thinking model (tests/fixtures/chat/olmo3_think, its prompt opening <think>):
    the reply's reasoning as `reasoning_content` beside `content`, whole and streamed;
    the random weights are pulled toward the tokens of </think> (524, 27963, 29)."""
    blob = pack(ROOT / "tests/fixtures/chat/olmo3_think", tmp / "olmo3-think.bin")
    with Server(blob, "--ctx-size", "512") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        args = dict(model="olmo3-think", messages=[{"role": "user", "content": "Why is the sky blue?"}], max_tokens=48,
                    seed=2, logit_bias={"524": 15, "27963": 15, "29": 13})
        raw = client.chat.completions.create(**args, extra_body={"reasoning_format": "none"}).choices[0].message.content
        message = client.chat.completions.create(**args).choices[0].message
        reasoning = getattr(message, "reasoning_content", None) or ""
        check("</think>" in raw and (reasoning, message.content) == tuple(raw.split("</think>", 1)),
              f"reasoning_content and content are the raw reply split at </think> ({len(reasoning)} + {len(message.content)} characters)")
        streamed_reasoning, streamed_content = "", ""
        for chunk in client.chat.completions.create(**args, stream=True):
            if chunk.choices:
                delta = chunk.choices[0].delta
                streamed_reasoning += getattr(delta, "reasoning_content", None) or ""
                streamed_content += delta.content or ""
        check((streamed_reasoning, streamed_content) == (reasoning, message.content), "streamed reasoning and content equal the whole answer's")


def check_responses(client, name, chat_args):
    """The Responses API through the client: the chat's reply as output_text, streamed
    events adding up to it, a refusal."""
    chat = client.chat.completions.create(**chat_args)
    args = dict(model=name, instructions="Be brief.", input="Hello, who are you?", max_output_tokens=10, temperature=0,
                extra_body={"ignore_eos": True})
    response = client.responses.create(**args)
    check(response.output_text == chat.choices[0].message.content and response.usage.output_tokens == 10,
          f"responses.create: the chat's reply as output_text ({response.output_text!r})")
    deltas, completed = "", None
    for event in client.responses.create(**args, stream=True):
        if event.type == "response.output_text.delta":
            deltas += event.delta
        elif event.type in ("response.completed", "response.incomplete"):
            completed = event.response
    check(deltas == response.output_text and completed is not None and completed.output_text == deltas,
          "streamed response: output_text deltas add up, the last event holds the response")
    try:
        client.responses.create(model=name, input="x", previous_response_id="resp_1")
        check(False, "previous_response_id is refused")
    except openai.BadRequestError as e:
        check("keeps no responses" in e.body["message"], f"previous_response_id: BadRequestError ({e.body['message']})")


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                                         "required": ["zone"]}}},
]


def check_tool_calls(tmp):
    """Tool calls through the client on a model whose template writes <function_calls>;
    the random weights are pulled toward '"' (id 1) and ')' (id 8) so that calls close."""
    blob = pack(ROOT / "tests/fixtures/chat/olmo3_tools", tmp / "olmo3-tools.bin")
    with Server(blob, "--parallel", "2", "--ctx-size", "512") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Oslo?"}]
        args = dict(model="olmo3-tools", messages=messages, tools=TOOLS, max_tokens=60, temperature=0, logit_bias={"1": 30, "8": 25})
        whole = client.chat.completions.create(**args, tool_choice="required", parallel_tool_calls=False)
        choice = whole.choices[0]
        calls = choice.message.tool_calls
        check(choice.finish_reason == "tool_calls" and choice.message.content is None and len(calls) == 1,
              f"tool_choice required: one call, finish tool_calls ({calls})")
        call = calls[0]
        arguments = json.loads(call.function.arguments)
        required = {"get_weather": "city", "get_time": "zone"}[call.function.name]
        check(call.type == "function" and isinstance(arguments.get(required), str),
              f"the call's arguments parse and hold the required key ({call.function.name}({call.function.arguments}))")
        parts = {}
        for chunk in client.chat.completions.create(**args, tool_choice="required", parallel_tool_calls=False, stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                part = parts.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                part["id"] += delta.id or ""
                part["name"] += delta.function.name or ""
                part["arguments"] += delta.function.arguments or ""
        check([(p["name"], p["arguments"]) for p in parts.values()] == [(call.function.name, call.function.arguments)],
              "streamed tool-call deltas add up to the whole answer's call")
        named = client.chat.completions.create(**args, tool_choice={"type": "function", "function": {"name": "get_time"}})
        check([c.function.name for c in named.choices[0].message.tool_calls] == ["get_time"], "a named tool_choice calls that function")
        turn = messages + [choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear"})}]
        flat = [{"type": "function", **t["function"]} for t in TOOLS]
        answer = client.responses.create(model="olmo3-tools", input="Weather in Oslo?", tools=flat, tool_choice="required",
                                         parallel_tool_calls=False, max_output_tokens=60, temperature=0,
                                         extra_body={"logit_bias": {"1": 30, "8": 25}})
        calls = [item for item in answer.output if item.type == "function_call"]
        check(len(calls) == 1 and calls[0].name == call.function.name and calls[0].arguments == call.function.arguments,
              f"responses.create with tools: the chat's call as a function_call item ({calls})")
        after = client.chat.completions.create(**{**args, "messages": turn, "max_tokens": 4}, tool_choice="none")
        check(after.choices[0].message.tool_calls is None and after.usage.prompt_tokens > whole.usage.prompt_tokens,
              "the call and its result go back as the next turn's prompt")
        try:
            client.chat.completions.create(**args, tool_choice={"type": "function", "function": {"name": "nope"}})
            check(False, "an unknown function in tool_choice is refused")
        except openai.BadRequestError as e:
            check("nope" in e.body["message"], f"an unknown tool_choice function: BadRequestError ({e.body['message']})")
        check(server.alive(), "the server is alive")


if __name__ == "__main__":
    main()
