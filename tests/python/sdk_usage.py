"""Builds provider usage objects with the providers' own Python SDKs and prints
them as tokenledger usage events, with the counts each must be stored with.

Every object is made by the SDK itself, offline: OpenAI's `CompletionUsage`
and `ResponseUsage`, Anthropic's `Usage` and Google's
`GenerateContentResponseUsageMetadata` are pydantic models constructed from
keyword arguments and serialised the default way (`model_dump()`: the Python
field names, unset fields as null), which is what an application that
forwards `response.usage` sends. Gemini is also sent as on the wire
(`model_dump(by_alias=True, exclude_none=True)`: camelCase). Bedrock's boto3
client returns plain dicts that botocore parses from the HTTP response; the
script runs botocore's own parser over a Converse response body with the
service model botocore ships, so the dict is exactly the one boto3 returns.

For each provider: plain, cached, cache writes (each lifetime the provider
has), reasoning or thinking, tools, and a zero-usage call. Then three
mistakes the gateway must refuse. Prints one JSON object:

    {"versions": {...}, "cases": [{"name", "provider", "model", "usage_format",
      "usage", "expect": {...}} ...], "refused": [{"name", ..., "mentions": [...]}]}

`expect` holds the event's token fields, its calls and its unpriced tokens.
"""

import json
import sys

import anthropic
import botocore
import botocore.parsers
import botocore.session
import openai
from anthropic.types import CacheCreation, OutputTokensDetails, ServerToolUsage
from anthropic.types import Usage as AnthropicUsage
from google import genai
from google.genai import types as gtypes
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import (
    InputTokensDetails,
    InputTokensDetailsCacheWriteTokensDetails,
    OutputTokensDetails as ResponsesOutputDetails,
)


def expect(prompt, completion, cached=0, write=0, write_1h=0, reasoning=0, calls=None,
           unpriced=None):
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_prompt_tokens": cached,
        "cache_write_tokens": write,
        "cache_write_1h_tokens": write_1h,
        "reasoning_tokens": reasoning,
        "calls": calls or {},
        "unpriced_tokens": unpriced or {},
    }


def case(name, provider, model, usage_format, usage, expected):
    # A round trip through JSON as the HTTP client would send it.
    return {"name": name, "provider": provider, "model": model,
            "usage_format": usage_format, "usage": json.loads(json.dumps(usage)),
            "expect": expected}


def openai_chat():
    def usage(prompt, completion, cached=None, write=None, reasoning=None, audio_in=None):
        details = None
        if cached is not None or write is not None or audio_in is not None:
            details = PromptTokensDetails(cached_tokens=cached, cache_write_tokens=write,
                                          audio_tokens=audio_in)
        return CompletionUsage(
            prompt_tokens=prompt, completion_tokens=completion,
            total_tokens=prompt + completion, prompt_tokens_details=details,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning)
            if reasoning is not None else None,
        ).model_dump()

    m, f, p = "gpt-5", "openai.chat_completions", "openai"
    return [
        case("openai.chat plain", p, m, f, usage(1200, 300), expect(1200, 300)),
        case("openai.chat cached", p, m, f, usage(5000, 100, cached=4096),
             expect(5000, 100, cached=4096)),
        case("openai.chat cache write", p, m, f, usage(5000, 100, cached=0, write=4096),
             expect(5000, 100, write=4096)),
        case("openai.chat reasoning", p, m, f, usage(800, 2000, reasoning=1500),
             expect(800, 2000, reasoning=1500)),
        # A tool call is output tokens; its definitions are prompt tokens.
        case("openai.chat tools", p, m, f, usage(2400, 60, cached=0, reasoning=0),
             expect(2400, 60)),
        case("openai.chat audio", p, "gpt-5", f, usage(1000, 10, audio_in=600),
             expect(1000, 10, unpriced={"input_audio": 600})),
        case("openai.chat zero", p, m, f, usage(0, 0), expect(0, 0)),
    ]


def openai_responses():
    def usage(inp, out, cached=0, write=0, split=None, reasoning=0):
        details = InputTokensDetails(
            cached_tokens=cached, cache_write_tokens=write,
            cache_write_tokens_details=InputTokensDetailsCacheWriteTokensDetails(
                ttl_30m_tokens=split[0], ttl_12h_tokens=split[1]) if split else None)
        return ResponseUsage(
            input_tokens=inp, input_tokens_details=details, output_tokens=out,
            output_tokens_details=ResponsesOutputDetails(reasoning_tokens=reasoning),
            total_tokens=inp + out,
        ).model_dump()

    m, f, p = "gpt-5", "openai.responses", "openai"
    return [
        case("openai.responses plain", p, m, f, usage(1200, 300), expect(1200, 300)),
        case("openai.responses cached", p, m, f, usage(9000, 200, cached=8192),
             expect(9000, 200, cached=8192)),
        case("openai.responses cache write 30m", p, m, f,
             usage(9000, 200, write=8192, split=(8192, 0)), expect(9000, 200, write=8192)),
        case("openai.responses cache write 12h", p, m, f,
             usage(9000, 200, write=8192, split=(0, 8192)),
             expect(9000, 200, unpriced={"input_cache_write_12h": 8192})),
        case("openai.responses reasoning", p, m, f, usage(700, 3000, reasoning=2500),
             expect(700, 3000, reasoning=2500)),
        case("openai.responses tools", p, m, f, usage(3100, 90, cached=1024),
             expect(3100, 90, cached=1024)),
        case("openai.responses zero", p, m, f, usage(0, 0), expect(0, 0)),
    ]


def anthropic_messages():
    def usage(inp, out, read=None, five=None, hour=None, thinking=None, searches=None):
        written = None if five is None and hour is None else (five or 0) + (hour or 0)
        return AnthropicUsage(
            input_tokens=inp, output_tokens=out, cache_read_input_tokens=read,
            cache_creation_input_tokens=written,
            cache_creation=CacheCreation(ephemeral_5m_input_tokens=five or 0,
                                         ephemeral_1h_input_tokens=hour or 0)
            if written is not None else None,
            output_tokens_details=OutputTokensDetails(thinking_tokens=thinking)
            if thinking is not None else None,
            server_tool_use=ServerToolUsage(web_search_requests=searches, web_fetch_requests=0)
            if searches is not None else None,
            service_tier="standard",
        ).model_dump()

    m, f, p = "claude-sonnet-4-5", "anthropic.messages", "anthropic"
    return [
        case("anthropic plain", p, m, f, usage(1200, 300), expect(1200, 300)),
        case("anthropic cached", p, m, f, usage(50, 300, read=4000),
             expect(4050, 300, cached=4000)),
        case("anthropic cache write 5m", p, m, f, usage(50, 300, read=0, five=4000),
             expect(4050, 300, write=4000)),
        case("anthropic cache write 1h", p, m, f, usage(50, 300, read=0, hour=4000),
             expect(4050, 300, write_1h=4000)),
        case("anthropic thinking", p, m, f, usage(500, 2400, thinking=2000),
             expect(500, 2400, reasoning=2000)),
        case("anthropic tools", p, m, f, usage(6000, 400, searches=3),
             expect(6000, 400, calls={"web_search": 3})),
        case("anthropic zero", p, m, f, usage(0, 0), expect(0, 0)),
    ]


def gemini():
    def meta(prompt, candidates, cached=None, thoughts=None, tool_prompt=None):
        total = prompt + candidates + (thoughts or 0) + (tool_prompt or 0)
        return gtypes.GenerateContentResponseUsageMetadata(
            prompt_token_count=prompt, candidates_token_count=candidates,
            cached_content_token_count=cached, thoughts_token_count=thoughts,
            tool_use_prompt_token_count=tool_prompt, total_token_count=total)

    m, f, p = "gemini-2.5-pro", "gemini.generate_content", "google"
    objects = [
        ("plain", meta(1200, 300), expect(1200, 300)),
        ("cached", meta(10000, 300, cached=8000), expect(10000, 300, cached=8000)),
        ("thinking", meta(700, 400, thoughts=1600), expect(700, 2000, reasoning=1600)),
        ("tools", meta(900, 100, tool_prompt=2500), expect(3400, 100)),
        ("zero", meta(0, 0), expect(0, 0)),
    ]
    cases = []
    for name, obj, expected in objects:
        # What a Python application sends: the SDK's default dump.
        cases.append(case(f"gemini {name} (sdk)", p, m, f, obj.model_dump(),
                          expected))
        # What the REST API returns: camelCase, zero fields left out.
        cases.append(case(f"gemini {name} (wire)", p, m, f,
                          obj.model_dump(by_alias=True, exclude_none=True),
                          expected))
    return cases


def bedrock():
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("Converse").output_shape
    parser = botocore.parsers.create_parser(model.metadata["protocol"])

    def usage(inp, out, read=None, write=None, details=None):
        body = {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                "stopReason": "end_turn", "metrics": {"latencyMs": 10},
                "usage": {"inputTokens": inp, "outputTokens": out,
                          "totalTokens": inp + out + (read or 0) + (write or 0)}}
        if read is not None:
            body["usage"]["cacheReadInputTokens"] = read
        if write is not None:
            body["usage"]["cacheWriteInputTokens"] = write
        if details is not None:
            body["usage"]["cacheDetails"] = [{"ttl": t, "inputTokens": n} for t, n in details]
        parsed = parser.parse({"status_code": 200, "headers": {},
                               "body": json.dumps(body).encode()}, shape)
        return parsed["usage"]

    m, f, p = "anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock.converse", "bedrock"
    return [
        case("bedrock plain", p, m, f, usage(1200, 300), expect(1200, 300)),
        case("bedrock cached", p, m, f, usage(50, 300, read=4000, write=0),
             expect(4050, 300, cached=4000)),
        case("bedrock cache write 5m", p, m, f, usage(50, 300, write=4000),
             expect(4050, 300, write=4000)),
        case("bedrock cache write 1h", p, m, f,
             usage(50, 300, write=4000, details=[("1h", 3000), ("5m", 1000)]),
             expect(4050, 300, write=1000, write_1h=3000)),
        # Converse reports thinking inside outputTokens, billed as output.
        case("bedrock thinking", p, m, f, usage(500, 2400), expect(500, 2400)),
        case("bedrock tools", p, m, f, usage(2600, 80, read=0, write=0), expect(2600, 80)),
        case("bedrock zero", p, m, f, usage(0, 0), expect(0, 0)),
    ]


def refused():
    gemini_empty = gtypes.GenerateContentResponseUsageMetadata().model_dump()
    return [
        {"name": "anthropic usage named openai.chat_completions", "provider": "openai",
         "model": "gpt-5", "usage_format": "openai.chat_completions",
         "usage": AnthropicUsage(input_tokens=1000, output_tokens=50,
                                 cache_read_input_tokens=200).model_dump(),
         "mentions": ["openai.chat_completions", "anthropic.messages"]},
        {"name": "chat usage named openai.responses", "provider": "openai", "model": "gpt-5",
         "usage_format": "openai.responses",
         "usage": CompletionUsage(prompt_tokens=10, completion_tokens=2,
                                  total_tokens=12).model_dump(),
         "mentions": ["openai.responses", "openai.chat_completions"]},
        {"name": "empty object", "provider": "openai", "model": "gpt-5",
         "usage_format": "openai.chat_completions", "usage": {},
         "mentions": ["openai.chat_completions", "empty"]},
        {"name": "gemini metadata with nothing set", "provider": "google",
         "model": "gemini-2.5-pro", "usage_format": "gemini.generate_content",
         "usage": gemini_empty, "mentions": ["gemini.generate_content", "count fields"]},
    ]


def main():
    out = {
        "versions": {"openai": openai.__version__, "anthropic": anthropic.__version__,
                     "google-genai": genai.__version__, "botocore": botocore.__version__},
        "cases": openai_chat() + openai_responses() + anthropic_messages() + gemini()
        + bedrock(),
        "refused": refused(),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
