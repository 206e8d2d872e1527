"""Drives the official OpenAI instrumentation against a local fake of the Chat
Completions API and exports its spans to tokenledger over OTLP/HTTP.

The fake answers on loopback with the usage shapes the real API returns
(cached prompt tokens and reasoning tokens in the details objects, and a
final usage chunk when a stream asks for `include_usage`). After the calls,
the script exports the very same spans a second time, as an exporter retry
would, and prints a JSON summary on stdout for the calling test:

    {"calls": [{"response_id", "model", "prompt_tokens", ...}], "spans": N,
     "retry": "SUCCESS"}

Usage: otlp_openai.py --endpoint http://127.0.0.1:PORT/v1/traces
                      [--header authorization=Bearer...] [--tenant acme]
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MODEL = "gpt-4o-mini"
# One entry per call the script makes: (response id, usage).
CALLS = [
    ("chatcmpl-tl-plain-1", {"prompt_tokens": 1200, "completion_tokens": 300,
                             "cached": 1024, "reasoning": 128}),
    ("chatcmpl-tl-stream-1", {"prompt_tokens": 800, "completion_tokens": 40,
                              "cached": 512, "reasoning": 0}),
]


def usage_object(usage):
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["cached"], "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage["reasoning"],
                                      "audio_tokens": 0},
    }


class FakeChatCompletions(BaseHTTPRequestHandler):
    """POST /v1/chat/completions, answered from CALLS in order."""

    calls = iter(CALLS)

    def log_message(self, *args):  # keep stdout for the summary
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        response_id, usage = next(self.calls)
        created = int(time.time())
        if request.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                              "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"content": "lo"},
                              "finish_reason": "stop"}]},
            ]
            if request.get("stream_options", {}).get("include_usage"):
                chunks.append({"choices": [], "usage": usage_object(usage)})
            for chunk in chunks:
                chunk.update({"id": response_id, "object": "chat.completion.chunk",
                              "created": created, "model": MODEL})
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            return
        body = json.dumps({
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello"}}],
            "usage": usage_object(usage),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--tenant", default="acme")
    args = parser.parse_args()
    headers = dict(h.split("=", 1) for h in args.header)

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    exporter = OTLPSpanExporter(endpoint=args.endpoint, headers=headers,
                                compression=Compression.Gzip, timeout=30)
    captured = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "otlp-e2e", "tenant.id": args.tenant}))
    # Simple processors export each span as it ends, so the summary below
    # is printed only after tokenledger has answered every export.
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(captured))
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)

    client = OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="test",
                    max_retries=0)
    messages = [{"role": "user", "content": "Say hello"}]
    client.chat.completions.create(model=MODEL, messages=messages)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, stream=True,
        stream_options={"include_usage": True})
    for _ in stream:
        pass

    spans = captured.get_finished_spans()
    # An exporter retry: the same spans, sent again.
    retry = OTLPSpanExporter(endpoint=args.endpoint, headers=headers,
                             compression=Compression.Gzip, timeout=30).export(spans)
    provider.shutdown()
    server.shutdown()
    summary = {
        "spans": len(spans),
        "retry": retry.name,
        "attributes": [dict(span.attributes or {}) for span in spans],
        "calls": [{"response_id": rid, "model": MODEL, **usage} for rid, usage in CALLS],
    }
    json.dump(summary, sys.stdout)
    return 0 if retry.name == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
