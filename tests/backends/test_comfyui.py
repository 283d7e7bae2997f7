"""ComfyUIBackend against a ComfyUI stand-in on loopback (tests/backends/comfyui_server.py)
that speaks ComfyUI's HTTP + WebSocket protocol, in both node generations."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from comfyui_server import (
    DEFAULT_MODULES,
    FakeComfyUI,
    ldm_modules_of_unet,
    make_lora_state,
    png_bytes,
)
from PIL import Image

from lora_studio.backends.base import BackendConfig
from lora_studio.backends.comfyui import (
    ComfyUIAuthError,
    ComfyUIBackend,
    ComfyUICheckpointError,
    ComfyUIConnectionError,
    ComfyUIResponseError,
    ComfyUIWorkflowError,
    describe_node_errors,
    estimated_fraction,
    parse_training_bar,
    pick_checkpoint,
)
from lora_studio.backends.comfyui_lora import comfy_lora_to_kohya
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import BackendError, DatasetError
from lora_studio.core.jobs import BackendType, Job, JobStatus, Progress
from lora_studio.core.request import TrainingRequest

pytestmark = pytest.mark.timeout(60)

TRIGGER = "zxq"
CAPTIONS = {"a": "a red fox, snow", "b": "zxq, a blue bird", "c": ""}


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Four images of mixed sizes: two captioned, one with an empty caption, one in a kohya
    repeat folder."""
    root = tmp_path / "data"
    root.mkdir()
    colours = {"a": ((80, 60), "red"), "b": ((60, 80), "blue"), "c": ((64, 64), "green")}
    for stem, (size, colour) in colours.items():
        Image.new("RGB", size, colour).save(root / f"{stem}.png")
        (root / f"{stem}.txt").write_text(CAPTIONS[stem], encoding="utf-8")
    extra = root / "3_extra"
    extra.mkdir()
    Image.new("RGB", (96, 64), "white").save(extra / "d.jpg")
    (extra / "d.txt").write_text("a white wall", encoding="utf-8")
    return root


def make_request(dataset_dir: Path, out: Path, steps: int = 12, **changes) -> TrainingRequest:
    settings = {"name": "comfy", "resolution": 64, "max_steps": steps, "rank": 4}
    config = LoraConfig.fast_preset().replace(**{**settings, "trigger_word": TRIGGER, **changes})
    return TrainingRequest(Dataset.from_directory(dataset_dir), config, "v1-5-pruned-emaonly", out)


ServerFactory = Callable[..., Awaitable[FakeComfyUI]]


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    servers: list[FakeComfyUI] = []

    async def start(**options) -> FakeComfyUI:
        server = FakeComfyUI(tmp_path / f"comfy{len(servers)}", **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def backend_for(tmp_path: Path) -> AsyncIterator[Callable[..., ComfyUIBackend]]:
    made: list[ComfyUIBackend] = []

    def make(url: str, **options) -> ComfyUIBackend:
        options.setdefault("poll_interval_s", 0.1)
        config = BackendConfig(BackendType.COMFYUI, tmp_path / "out", api_url=url, timeout_s=5)
        backend = ComfyUIBackend(config, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


async def follow(
    backend: ComfyUIBackend,
    job: Job,
    on_progress: Callable[[Progress], Awaitable[None]] | None = None,
    timeout: float = 20.0,
) -> list[Progress]:
    seen: list[Progress] = []

    async def run() -> None:
        async for progress in backend.watch(job):
            seen.append(progress)
            if on_progress is not None:
                await on_progress(progress)

    await asyncio.wait_for(run(), timeout)
    return seen


async def start_when_connected(server: FakeComfyUI) -> None:
    """Let held prompts run once the backend's WebSocket is connected."""
    for _ in range(200):
        if server.sockets:
            break
        await asyncio.sleep(0.01)
    assert server.sockets
    server.release()


def single_line(text: str | None) -> bool:
    return bool(text) and "\n" not in text  # type: ignore[operator]


@pytest.fixture(scope="module")
def tiny_modules(tiny_model: Path) -> dict:
    from diffusers import UNet2DConditionModel

    return ldm_modules_of_unet(UNet2DConditionModel.from_pretrained(tiny_model / "unet"))


# ---- check() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generation", "nodes"),
    [
        ("old", "LoadImageTextSetFromFolderNode -> VAEEncode -> TrainLoraNode -> SaveLoRANode"),
        (
            "new",
            "LoadImageTextDataSetFromFolder -> MakeTrainingDataset -> TrainLoraNode -> SaveLoRA",
        ),
    ],
)
async def test_check_reports_version_device_and_training_nodes(
    comfy, backend_for, generation, nodes
):
    server = await comfy(generation=generation)
    status = await backend_for(server.url).check()
    assert status.ok, status.message
    assert f"ComfyUI {server.version}" in status.message and nodes in status.message
    assert "2 checkpoint(s)" in status.message and status.device == "cpu"
    assert await backend_for(server.url).list_checkpoints() == tuple(server.checkpoints)


async def test_check_names_the_nodes_a_too_old_server_lacks(comfy, backend_for):
    server = await comfy(generation="none")
    status = await backend_for(server.url).check()
    assert not status.ok and single_line(status.message)
    for name in ("TrainLoraNode", "SaveLoRA or SaveLoRANode", "LoadImageTextDataSetFromFolder"):
        assert name in status.message
    assert "0.3.30" in status.message and "Update ComfyUI" in status.message


async def test_api_prefix_is_found_and_a_token_is_sent(comfy, backend_for):
    server = await comfy(generation="new", api_only=True)
    server.token = "s3cret"
    refused = await backend_for(server.url, token=None).check()
    assert not refused.ok and "HTTP 401" in refused.message and "token" in refused.message
    status = await backend_for(server.url, token="s3cret").check()
    assert status.ok, status.message
    assert (await backend_for(server.url + "/api", token="s3cret").check()).ok


# ---- full runs ----------------------------------------------------------------------------------


async def test_full_run_old_generation(
    comfy, backend_for, dataset_dir, tmp_path, tiny_model, tiny_modules
):
    """v0.3.64: no progress events (the step count comes from the console log), the
    dataset goes up into a fresh folder with every caption, and the LoRA comes back as a
    kohya file that diffusers loads into the tiny SD 1.5 pipeline."""
    server = await comfy(generation="old", modules=tiny_modules, step_delay=0.01)
    server.hold = True  # start once the WebSocket is up, so that it sees every event
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=12))
    await start_when_connected(server)
    assert job.remote_id in server.prompts and job.base_model == "v1-5-pruned-emaonly.safetensors"

    # the upload: a fresh subfolder, every image with a caption (trigger first, or alone)
    folder = f"lora-studio/{job.id}"
    assert {u["subfolder"] for u in server.uploads} == {folder, f"{folder}/3_images"}
    assert len([u for u in server.uploads if u["name"].endswith(".txt")]) == 4
    graph = server.prompts[job.remote_id]
    assert [n["class_type"] for n in graph.values()] == [
        "CheckpointLoaderSimple",
        "LoadImageTextSetFromFolderNode",
        "VAEEncode",
        "TrainLoraNode",
        "SaveLoRANode",
        "LossGraphNode",
    ]
    train = graph["4"]["inputs"]
    assert (train["steps"], train["rank"], train["batch_size"]) == (12, 4, 1)
    assert (train["training_dtype"], train["lora_dtype"], train["optimizer"]) == (
        "bf16",
        "fp32",
        "AdamW",
    )
    assert graph["5"]["inputs"]["prefix"] == f"loras/{job.id}"

    seen = await follow(backend, job)
    final = seen[-1]
    assert final.status is JobStatus.SUCCEEDED, final.error
    loaded = server.loaded[job.remote_id]
    assert len(loaded) == 6  # 3 images + one image repeated 3 times
    assert sorted({caption for _, caption in loaded}) == sorted(
        {"zxq, a red fox, snow", "zxq, a blue bird", "zxq", "zxq, a white wall"}
    )
    # progress came from the tqdm bar in the log: steps rose to the end, never stuck at 0
    running = [p for p in seen if p.status is JobStatus.RUNNING]
    steps = [p.step for p in running]
    assert steps and steps == sorted(steps) and max(steps) > 0
    assert any(p.loss is not None for p in running)
    assert not any("estimated" in p.message for p in seen)
    assert final.step == final.total_steps == 12 and final.fraction == 1.0

    # the file: unique name pattern on the server, converted here, never overwritten
    assert [p.name for p in server.saved] == [f"{job.id}_12_steps_00001_.safetensors"]
    out = Path(final.output_path)
    assert out == tmp_path / "out" / "comfy.safetensors" and job.output_path == str(out)
    check_kohya_file(out, server.saved[0], rank=4)
    assert any("Left out" in line and ".diff_b" in line for line in final.log_tail)
    assert any("Reshaped" in line for line in final.log_tail)
    assert_loads_in_tiny_pipeline(out, server.saved[0], tiny_model, tiny_modules)

    # download again: same file; into another folder: a copy, never over an existing file
    assert await backend.download_weights(job) == out
    copied = await backend.download_weights(job, tmp_path)
    again = await backend.download_weights(job, tmp_path)
    assert copied == tmp_path / "comfy.safetensors" and again == tmp_path / "comfy_2.safetensors"


async def test_full_run_new_generation(
    comfy, backend_for, dataset_dir, tmp_path, tiny_model, tiny_modules
):
    """The later nodes: progress events, images in their aspect-ratio buckets (the nodes
    take mixed sizes), the file found through /models/loras."""
    server = await comfy(generation="new", modules=tiny_modules, step_delay=0.01)
    server.list_output_loras = True
    server.hold = True
    backend = backend_for(server.url)
    request = make_request(
        dataset_dir,
        tmp_path / "out",
        steps=10,
        mixed_precision="no",
        resolution=256,
        min_bucket_side=64,
    )
    job = await backend.submit(request)
    graph = server.prompts[job.remote_id]
    assert [n["class_type"] for n in graph.values()] == [
        "CheckpointLoaderSimple",
        "LoadImageTextDataSetFromFolder",
        "MakeTrainingDataset",
        "TrainLoraNode",
        "SaveLoRA",
        "LossGraphNode",
    ]
    train = graph["4"]["inputs"]
    assert train["training_dtype"] == "fp32" and train["bypass_mode"] is False
    assert train["checkpoint_depth"] == 1  # an input LoRA Studio does not set: the default
    await start_when_connected(server)
    seen = await follow(backend, job)
    final = seen[-1]
    assert final.status is JobStatus.SUCCEEDED, final.error
    steps = [p.step for p in seen if p.status is JobStatus.RUNNING]
    assert len(set(steps)) >= 3 and steps == sorted(steps)
    sizes = {
        Image.open(server.dirs["input"] / u["subfolder"] / u["name"]).size
        for u in server.uploads
        if u["name"].endswith(".png")
    }
    assert len(sizes) > 1  # bucketed, not squashed into one square
    out = Path(final.output_path)
    check_kohya_file(out, server.saved[0], rank=4)
    assert_loads_in_tiny_pipeline(out, server.saved[0], tiny_model, tiny_modules)


def check_kohya_file(path: Path, raw: Path, *, rank: int) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        meta = handle.metadata()
        conv = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
        conv_up = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight")
        proj = handle.get_tensor("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight")
        alpha = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.alpha")
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert not any(k.endswith((".diff", ".diff_b")) for k in keys)
    assert conv.shape == (rank, 32, 3, 3) and conv_up.shape == (32, rank, 1, 1)
    assert proj.shape == (rank, 32, 1, 1) and float(alpha) == 1.0
    assert meta["ss_network_dim"] == str(rank) and meta["ss_network_alpha"] == "1.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == path.stem
    assert meta["ss_sd_model_name"] == "v1-5-pruned-emaonly.safetensors"
    assert meta["ss_lr_scheduler"] == "constant" and "sshs_model_hash" in meta
    assert json.loads(meta["ss_tag_frequency"])
    assert json.loads(meta["lora_studio.comfyui"])["file"] == f"loras/{raw.name}"


def assert_loads_in_tiny_pipeline(path: Path, raw: Path, model: Path, modules: dict) -> None:
    """diffusers' load_lora_weights takes the file, every adapted layer lands where
    ComfyUI trained it (the weights compared, not just the shapes)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    wrapped = {n: m for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    assert len(wrapped) == sum(1 for s in modules.values() if len(s.weight) >= 2)
    comfy = load_file(str(raw))
    for diffusers_name, ldm_name in [
        ("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
        ("down_blocks.1.resnets.1.conv2", "input_blocks.5.0.out_layers.3"),
        ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
        ("down_blocks.2.resnets.0.conv_shortcut", "input_blocks.7.0.skip_connection"),
        ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
        ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
        (
            "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
            "output_blocks.7.1.transformer_blocks.0.attn2.to_k",
        ),
        ("up_blocks.3.attentions.2.proj_out", "output_blocks.11.1.proj_out"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("conv_out", "out.2"),
    ]:
        layer = wrapped[diffusers_name]
        down = layer.lora_A[next(iter(layer.lora_A))].weight
        up = layer.lora_B[next(iter(layer.lora_B))].weight
        raw_down = comfy[f"diffusion_model.{ldm_name}.lora_down.weight"].float()
        raw_up = comfy[f"diffusion_model.{ldm_name}.lora_up.weight"].float()
        assert torch.equal(down.flatten(1), raw_down), diffusers_name
        assert torch.equal(up.flatten(1), raw_up), diffusers_name


# ---- node errors --------------------------------------------------------------------------------


async def test_settings_the_node_cannot_take_are_refused_before_upload(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old")
    backend = backend_for(server.url)
    with pytest.raises(
        ComfyUIWorkflowError,
        match=r"TrainLoraNode \(node 4\): rank must be at most 128 \(got 256\)",
    ) as caught:
        await backend.submit(make_request(dataset_dir, tmp_path / "out", rank=256, alpha=256.0))
    assert caught.value.node_errors == {"4": ["rank must be at most 128 (got 256)"]}
    assert server.uploads == [] and server.prompts == {}
    with pytest.raises(BackendError, match="no prodigy optimizer"):
        await backend.submit(make_request(dataset_dir, tmp_path / "out", optimizer="prodigy"))


async def test_node_errors_from_the_server_are_shown_per_node(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old")
    server.discard_uploads = True  # the folder never appears: ComfyUI refuses its name
    backend = backend_for(server.url)
    with pytest.raises(ComfyUIWorkflowError) as caught:
        await backend.submit(make_request(dataset_dir, tmp_path / "out"))
    message = str(caught.value)
    assert single_line(message)
    assert message.startswith(
        "ComfyUI refused the training workflow: LoadImageTextSetFromFolderNode (node 2): Value not in list: folder: 'lora-studio/"
    )
    assert list(caught.value.node_errors) == ["2"]

    # a hand-broken graph straight to /prompt: one sentence per node
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
        "5": {"class_type": "SaveLoRANode", "inputs": {"prefix": "loras/x"}},
    }
    with pytest.raises(ComfyUIWorkflowError) as caught:
        await backend._queue_prompt(graph, "client")
    assert caught.value.node_errors == {"5": ["Required input is missing: lora"]}
    graph["5"]["inputs"]["lora"] = ["1", 0]
    with pytest.raises(ComfyUIWorkflowError) as caught:
        await backend._queue_prompt(graph, "client")
    assert (
        "SaveLoRANode (node 5): Return type mismatch between linked nodes: lora, received_type(MODEL) mismatch input_type(LORA_MODEL)"
        in str(caught.value)
    )
    assert (
        "CheckpointLoaderSimple (node 1): Value not in list: ckpt_name: 'nope.safetensors' not in"
        in str(caught.value)
    )


def test_describe_node_errors_without_node_details() -> None:
    message, per_node = describe_node_errors(
        {
            "error": {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
            },
            "node_errors": {},
        },
        {},
    )
    assert (
        message == "ComfyUI refused the training workflow: Prompt has no outputs" and per_node == {}
    )


# ---- checkpoints and captions -------------------------------------------------------------------


async def test_the_base_model_must_be_one_of_the_servers_checkpoints(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="new")
    request = make_request(dataset_dir, tmp_path / "out")
    request = TrainingRequest(
        request.dataset, request.config, "builtin:tiny-sd15", request.output_dir
    )
    with pytest.raises(
        ComfyUICheckpointError,
        match="no checkpoint named 'builtin:tiny-sd15'; choose one of: v1-5-pruned-emaonly.safetensors, SDXL/sd_xl_base_1.0.safetensors",
    ):
        await backend_for(server.url).submit(request)
    job = await backend_for(server.url, checkpoint="sd_xl_base_1.0").submit(request)
    assert job.base_model == "SDXL/sd_xl_base_1.0.safetensors"
    assert (
        pick_checkpoint("V1-5-PRUNED-EMAONLY.SAFETENSORS", server.checkpoints)
        == server.checkpoints[0]
    )


async def test_uncaptioned_images_need_a_trigger_word(comfy, backend_for, dataset_dir, tmp_path):
    server = await comfy(generation="old")
    request = make_request(dataset_dir, tmp_path / "out", trigger_word="")
    with pytest.raises(
        DatasetError, match=r"1 image\(s\) have no caption \(c.png\) and there is no trigger word"
    ):
        await backend_for(server.url).submit(request)
    assert server.uploads == []


# ---- progress when the server tells little ------------------------------------------------------


async def test_without_a_websocket_polling_and_the_log_carry_the_run(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old", step_delay=0.01)
    server.refuse_ws = True
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=20))
    seen = await follow(backend, job)
    assert seen[-1].status is JobStatus.SUCCEEDED, seen[-1].error
    steps = [p.step for p in seen if p.status is JobStatus.RUNNING]
    assert len(set(steps)) >= 2 and server.ws_connects == 0
    assert Path(seen[-1].output_path).exists()


async def test_no_step_count_anywhere_shows_elapsed_time_and_an_estimate(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old", step_delay=0.02)
    server.logs_enabled = False
    backend = backend_for(server.url, estimate_seconds_per_step=0.02)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=30))
    seen = await follow(backend, job)
    assert seen[-1].status is JobStatus.SUCCEEDED, seen[-1].error
    estimated = [p for p in seen if p.status is JobStatus.RUNNING and "estimated" in p.message]
    assert estimated and "elapsed" in estimated[-1].message
    assert len({p.fraction for p in estimated}) >= 2 and max(p.fraction for p in estimated) > 0


async def test_a_dropped_websocket_is_reconnected_and_the_run_finishes(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="new", step_delay=0.01)
    server.drop_ws_at_step = 4
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=30))
    seen = await follow(backend, job)
    assert seen[-1].status is JobStatus.SUCCEEDED, seen[-1].error
    assert server.ws_connects >= 2
    assert max(p.step for p in seen if p.status is JobStatus.RUNNING) > 4


async def test_an_error_during_training_fails_the_job_with_the_reason(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="new")
    server.error_at_step = 3
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out"))
    final = (await follow(backend, job))[-1]
    assert final.status is JobStatus.FAILED and job.status is JobStatus.FAILED
    assert single_line(final.error)
    assert final.error.startswith(
        "ComfyUI's TrainLoraNode (node 4) failed: RuntimeError: CUDA error: out of memory"
    )
    assert "lower the batch size" in final.error
    assert any("loss.backward()" in line for line in final.log_tail)
    with pytest.raises(BackendError, match="has no LoRA on ComfyUI"):
        await backend.download_weights(job)


async def test_a_failing_loss_plot_after_the_save_still_delivers_the_lora(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old")
    server.flat_loss = True
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=3))
    final = (await follow(backend, job))[-1]
    assert final.status is JobStatus.SUCCEEDED and Path(final.output_path).exists()
    assert any("only the loss plot; the LoRA was saved" in line for line in final.log_tail)
    # a single step: no loss plot in the graph at all (ComfyUI's would divide by zero)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=1))
    assert "LossGraphNode" not in {n["class_type"] for n in server.prompts[job.remote_id].values()}
    assert (await follow(backend, job))[-1].status is JobStatus.SUCCEEDED


# ---- cancel -------------------------------------------------------------------------------------


async def test_cancel_during_training_on_v0_3_64_tells_the_truth(
    comfy, backend_for, dataset_dir, tmp_path
):
    """v0.3.64 cannot stop a running TrainLoraNode: it trains to the end, then reports
    execution_interrupted and saves nothing. The job says so and ends cancelled."""
    server = await comfy(generation="old", step_delay=0.01)
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=40))

    async def cancel_once_training(progress: Progress) -> None:
        if (
            progress.status is JobStatus.RUNNING
            and progress.step > 0
            and not server.interrupt_requests
        ):
            await backend.cancel(job)

    seen = await follow(backend, job, cancel_once_training)
    assert server.interrupt_requests == [{"prompt_id": job.remote_id}]
    waiting = [p for p in seen if "cannot stop its Train LoRA node midway" in p.message]
    assert waiting and waiting[0].status is JobStatus.RUNNING
    final = seen[-1]
    assert final.status is JobStatus.CANCELLED and job.status is JobStatus.CANCELLED
    assert "ran the training to its end first" in final.message and "saved no LoRA" in final.message
    assert server.saved == [] and final.output_path is None
    assert server.history[job.remote_id]["status"]["messages"][-1][0] == "execution_interrupted"


async def test_cancel_on_a_server_that_can_stop_training(comfy, backend_for, dataset_dir, tmp_path):
    server = await comfy(generation="new", step_delay=0.01)
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=200))

    async def cancel_early(progress: Progress) -> None:
        if progress.step >= 2 and not server.interrupt_requests:
            await backend.cancel(job)

    seen = await follow(backend, job, cancel_early)
    final = seen[-1]
    assert (
        final.status is JobStatus.CANCELLED
        and final.message == "Cancelled on ComfyUI; no LoRA was saved."
    )
    assert any(
        p.message == "Cancel sent; ComfyUI stops the training at its next step." for p in seen
    )
    assert max(p.step for p in seen) < 200 and server.saved == []


async def test_cancel_while_queued_takes_the_prompt_off_the_queue(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old")
    server.hold = True
    backend = backend_for(server.url)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out"))
    await asyncio.sleep(0.2)
    assert (await backend.progress(job)).status is JobStatus.QUEUED
    await backend.cancel(job)
    final = (await follow(backend, job))[-1]
    assert final.status is JobStatus.CANCELLED and "removed from ComfyUI's queue" in final.message
    assert server.pending == [] and server.interrupt_requests == [] and server.history == {}


# ---- failures of the server ---------------------------------------------------------------------


async def test_refused_connection_500_and_malformed_json_are_clear_errors(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old")
    url = server.url
    request = make_request(dataset_dir, tmp_path / "out")

    server.fail_routes = {"/object_info": 500}
    with pytest.raises(
        ComfyUIResponseError,
        match=r"failed on GET /object_info/\w+ \(HTTP 500: 500 Internal Server Error",
    ) as caught:
        await backend_for(url).submit(request)
    assert single_line(str(caught.value)) and caught.value.status == 500
    server.fail_routes = {}

    server.malformed_routes = {"/prompt"}
    with pytest.raises(
        ComfyUIResponseError, match="sent a reply to /prompt that is not valid JSON"
    ):
        await backend_for(url).submit(request)
    server.malformed_routes = {"/system_stats"}
    status = await backend_for(url).check()
    assert not status.ok and "/system_stats that is not valid JSON" in status.message
    server.malformed_routes = set()

    await server.stop()
    status = await backend_for(url).check()
    assert not status.ok and status.message.startswith(f"Cannot reach ComfyUI at {url}")
    with pytest.raises(ComfyUIConnectionError, match="is the server running"):
        await backend_for(url).submit(request)
    assert issubclass(ComfyUIAuthError, BackendError)


async def test_a_server_that_goes_away_mid_run_fails_the_job_after_the_grace_time(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old", step_delay=0.05)
    backend = backend_for(server.url, give_up_after_s=0.5)
    job = await backend.submit(make_request(dataset_dir, tmp_path / "out", steps=200))

    async def stop_when_running(progress: Progress) -> None:
        if progress.status is JobStatus.RUNNING and server._runner is not None:
            await server.stop()

    final = (await follow(backend, job, stop_when_running))[-1]
    assert final.status is JobStatus.FAILED and single_line(final.error)
    assert final.error.startswith(f"Lost contact with ComfyUI at {server.url}")


# ---- restart ------------------------------------------------------------------------------------


async def test_reattach_after_a_restart_follows_the_run_to_the_end(
    comfy, backend_for, dataset_dir, tmp_path
):
    server = await comfy(generation="old", step_delay=0.01)
    first = backend_for(server.url)
    submitted = await first.submit(make_request(dataset_dir, tmp_path / "out", steps=40))

    async def quit_app(progress: Progress) -> None:
        if progress.step >= 5:
            raise asyncio.CancelledError  # the app closes mid-run

    with pytest.raises(asyncio.CancelledError):
        await follow(first, submitted, quit_app)
    await first.aclose()
    connects = server.ws_connects

    # the job as the store keeps it: another id, the prompt id, the spec's config
    stored = Job(
        id="stored-1",
        backend=BackendType.COMFYUI,
        name=submitted.name,
        base_model=submitted.base_model,
        output_dir=submitted.output_dir,
        dataset_dir=submitted.dataset_dir,
        config=submitted.config,
        remote_id=submitted.remote_id,
        status=JobStatus.RUNNING,
    )
    second = backend_for(server.url)
    await second.reattach(stored)
    seen = await follow(second, stored)
    final = seen[-1]
    assert final.status is JobStatus.SUCCEEDED, final.error
    assert stored.output_path == final.output_path and Path(final.output_path).exists()
    assert final.total_steps == 40 and any(0 < p.step < 40 for p in seen)
    assert server.ws_connects > connects  # the same client id again
    assert Path(final.output_path).name == "comfy.safetensors"

    # a run that finished while the app was closed: re-attached, downloaded, never overwritten
    third = backend_for(server.url)
    stored.id = "stored-2"
    await third.reattach(stored)
    final = (await follow(third, stored))[-1]
    assert (
        final.status is JobStatus.SUCCEEDED
        and Path(final.output_path).name == "comfy_2.safetensors"
    )

    with pytest.raises(BackendError, match="no ComfyUI prompt id"):
        await third.reattach(
            Job(id="x", backend=BackendType.COMFYUI, name="x", base_model="", output_dir="")
        )


async def test_the_job_queue_re_attaches_a_comfyui_run_after_a_restart(
    comfy, dataset_dir, tmp_path
):
    """The production path: JobQueue + backend_for_spec, the app closing mid-run and the
    next start following the same prompt to its LoRA."""
    from lora_studio.backends.factory import backend_for_spec
    from lora_studio.core.jobs import JobSpec, JobStore
    from lora_studio.jobqueue import JobQueue

    server = await comfy(generation="new", step_delay=0.02)
    made: list[ComfyUIBackend] = []

    def factory(spec: JobSpec) -> ComfyUIBackend:
        backend = backend_for_spec(spec)
        assert isinstance(backend, ComfyUIBackend)
        made.append(backend)
        return backend

    request = make_request(dataset_dir, tmp_path / "out", steps=60)
    spec = JobSpec(
        dataset_dir=str(dataset_dir),
        config=request.config.to_dict(),
        base_model="ignored: the checkpoint option wins",
        output_dir=str(tmp_path / "out"),
        backend=BackendType.COMFYUI,
        backend_options={"url": server.url, "checkpoint": "v1-5-pruned-emaonly.safetensors"},
    )
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(store, factory)
    training = asyncio.Event()
    queue.add_listener(lambda job, p: training.set() if p.step >= 3 else None)
    job = queue.enqueue(spec)
    await queue.start()
    await asyncio.wait_for(training.wait(), 20)
    await queue.stop()  # the app closes
    for backend in made:
        await backend.aclose()
    stored = store.get(job.id)
    assert stored is not None and stored.remote_id in server.prompts
    assert stored.status is JobStatus.RUNNING and server.running is not None

    queue = JobQueue(store, factory)
    try:
        assert [j.id for j in await queue.start()] == [job.id]
        done = await asyncio.wait_for(queue.wait(job.id), 20)
    finally:
        await queue.stop()
        for backend in made:
            await backend.aclose()
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.output_path == str(tmp_path / "out" / "comfy.safetensors")
    assert Path(done.output_path).exists() and store.logs(job.id)


async def test_reattach_to_a_prompt_the_server_forgot_fails_clearly(comfy, backend_for):
    server = await comfy(generation="new")
    backend = backend_for(server.url)
    job = Job(
        id="j",
        backend=BackendType.COMFYUI,
        name="gone",
        base_model="",
        output_dir="",
        remote_id="nope",
    )
    await backend.reattach(job)
    final = (await follow(backend, job))[-1]
    assert final.status is JobStatus.FAILED and "no longer knows prompt nope" in final.error


# ---- pieces -------------------------------------------------------------------------------------


async def test_the_stand_in_refuses_uploads_outside_the_input_folder(comfy):
    server = await comfy()
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{server.url}/upload/image",
            files={"image": ("x.png", png_bytes(), "image/png")},
            data={"subfolder": "../../evil", "overwrite": "true"},
        )
    assert reply.status_code == 400 and not (server.root / "evil").exists()


def test_conversion_reshapes_convolutions_and_says_what_is_left_out() -> None:
    state = make_lora_state(DEFAULT_MODULES, rank=4, dtype="bf16", seed=1)
    result = comfy_lora_to_kohya(state)
    tensors = result.tensors
    assert result.base_model_version == "sd_v1" and result.rank == 4 and result.alpha == 1.0
    assert tensors["lora_unet_conv_in.lora_down.weight"].shape == (4, 4, 3, 3)
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (32, 4, 1, 1)
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (
        4,
        32,
        1,
        1,
    )
    assert tensors["lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_down.weight"].shape == (
        4,
        32,
        1,
        1,
    )
    assert tensors["lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight"].shape == (
        4,
        32,
        3,
        3,
    )
    assert tensors["lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight"].shape == (
        4,
        64,
        3,
        3,
    )
    assert tensors["lora_unet_time_embedding_linear_1.lora_down.weight"].shape == (4, 32)
    assert tensors[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    ].shape == (4, 768)
    assert result.modules == 9 and result.conv_modules == 6
    left_out = next(n for n in result.notes if n.startswith("Left out"))
    assert "2 norm weights '.diff', 9 biases '.diff_b'" in left_out


def test_conversion_keeps_sdxl_and_flux_names() -> None:
    import torch

    sdxl = {
        "diffusion_model.label_emb.0.0.lora_down.weight": torch.ones(4, 2816),
        "diffusion_model.label_emb.0.0.lora_up.weight": torch.ones(1280, 4),
        "diffusion_model.input_blocks.4.1.proj_in.lora_down.weight": torch.ones(4, 640),
        "diffusion_model.input_blocks.4.1.proj_in.lora_up.weight": torch.ones(640, 4),
    }
    result = comfy_lora_to_kohya(sdxl)
    assert result.base_model_version == "sdxl_base_v1-0"
    assert result.tensors["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"].shape == (4, 640)
    flux = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.ones(4, 3072),
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.ones(9216, 4),
        "diffusion_model.double_blocks.0.img_attn.qkv.alpha": torch.tensor(1.0),
    }
    result = comfy_lora_to_kohya(flux)
    assert result.base_model_version == "flux1"
    assert set(result.tensors) == {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
        "lora_unet_double_blocks_0_img_attn_qkv.alpha",
    }
    with pytest.raises(ValueError, match="no LoRA layers"):
        comfy_lora_to_kohya({"diffusion_model.x.diff": torch.zeros(3)})


def test_the_training_bar_and_the_estimate() -> None:
    bar = parse_training_bar(
        "\rTraining LoRA:  45%|████▌     | 45/100 [00:10<00:12,  4.50it/s, loss=0.1234]"
    )
    assert bar is not None and (bar.done, bar.total, bar.loss, bar.remaining_s) == (
        45,
        100,
        0.1234,
        12.0,
    )
    assert parse_training_bar("\rTraining LoRA:   0%|          | 0/16 [00:00<?, ?it/s]").done == 0
    assert parse_training_bar("100%|██████████| 20/20 [00:02<00:00]") is None
    assert estimated_fraction(5, 10) == 0.5
    assert 0.9 < estimated_fraction(30, 10) < 0.99
