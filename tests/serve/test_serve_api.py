"""The viewer's JSON API, with answers checked against netvis's own functions called directly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from serve_testing import N_IMAGES, run_job, wait_job


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def inputs(viewer, indices):
    return viewer.preprocess(viewer.images[list(indices)])


def test_model_lists_layers_with_their_output_shapes(client, viewer):
    info = client.get("/api/model").json()
    model = viewer.model
    shapes = {}

    def record(name):
        def hook(module, args, out):
            shapes.setdefault(name, tuple(out.shape[1:]))

        return hook

    with viewer.model_lock:
        handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
        try:
            with torch.no_grad():
                model(inputs(viewer, [0]))
        finally:
            for h in handles:
                h.remove()
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert layers["layer1"]["shape"] == [4, 28, 28] and layers["layer3"]["shape"] == [8, 7, 7]
    assert layers["fc"]["shape"] == [10] and layers["layer2.0.conv1"]["type"] == "Conv2d"
    for name, layer in layers.items():
        assert tuple(layer["shape"]) == shapes[name]
        assert layer["channels"] == layer["shape"][0]
    assert info["classes"] == viewer.checkpoint.classes and len(info["classes"]) == 10
    assert info["input_shape"] == [1, 28, 28] and info["data"]["images"] == N_IMAGES
    from netvis.saliency import METHODS

    assert info["methods"] == list(METHODS)
    assert {"occlusion", "gradient", "guided-backprop", "deconvnet", "smoothgrad", "integrated-gradients",
            "grad-cam", "guided-grad-cam"} <= set(info["methods"])
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert client.get("/api/health").json()["ok"] is True


def test_data_pages_and_pictures_are_the_stored_pixels(client, viewer):
    page = client.get("/api/data?offset=2&limit=3").json()
    assert page["total"] == N_IMAGES
    assert [item["index"] for item in page["items"]] == [2, 3, 4]
    assert [item["label"] for item in page["items"]] == viewer.targets[2:5].tolist()
    assert page["items"][0]["class"] == viewer.data_classes[int(viewer.targets[2])]
    response = client.get(page["items"][1]["url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert np.array_equal(png_array(response.content), viewer.images[3, 0].numpy())
    assert client.get(f"/api/data/{N_IMAGES}.png").status_code == 404
    assert client.get("/api/data?offset=x").status_code == 400


def test_the_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/viewer.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/viewer.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "fetch(" in script.text and "https://" not in script.text
    assert client.get("/static/viewer.css").status_code == 200
    assert client.get("/static/missing.js").status_code == 404


def test_examples_job_matches_dataset_examples(client, viewer):
    from netvis.features import DatasetExamples, dataset_examples, receptive_field

    result = run_job(client, {"kind": "examples", "layer": "layer2", "k": 5})
    with viewer.model_lock:
        expected = dataset_examples(viewer.model, "layer2", inputs(viewer, range(N_IMAGES)), k=5)
        boxes = expected.regions(receptive_field(viewer.model, "layer2", (1, 28, 28)))
    assert result["channels"] == 4 and result["k"] == 5 and result["num_images"] == N_IMAGES
    assert result["feature_shape"] == [4, 14, 14] and result["input_size"] == [28, 28]
    for c, unit in enumerate(result["units"]):
        assert unit["channel"] == c
        assert unit["indices"] == expected.indices[c].tolist()
        assert unit["values"] == pytest.approx(expected.values[c].tolist(), rel=1e-5, abs=1e-6)
        assert unit["labels"] == viewer.targets[expected.indices[c]].tolist()
        assert unit["boxes"] == boxes[c].tolist()
    stored = list(viewer.cache.results.glob("examples/*/examples.pt"))
    assert any(torch.equal(DatasetExamples.load(p).indices, expected.indices) for p in stored)


def test_filters_job_is_guided_backprop_of_the_channel_on_its_top_images(client, viewer):
    from netvis.app.serve.viewer import signed_picture
    from netvis.features import filter_visualization

    examples = run_job(client, {"kind": "examples", "layer": "layer3", "k": 6})
    result = run_job(client, {"kind": "filters", "layer": "layer3", "k": 6, "channel": 2, "n": 3})
    top = examples["units"][2]["indices"][:3]
    assert [item["index"] for item in result["items"]] == top
    with viewer.model_lock:
        expected = filter_visualization(viewer.model, inputs(viewer, top), "layer3", 2, guided=True)
    for i, item in enumerate(result["items"]):
        assert item["box"] == expected.crop_boxes[i].tolist()
        assert item["score"] == pytest.approx(float(expected.score[i]), rel=1e-5)
        picture = png_array(client.get(item["url"]).content)
        assert np.array_equal(picture, signed_picture(expected.grad[i])[0])
        assert item["image_url"] == f"/api/data/{top[i]}.png"


def test_saliency_job_shows_every_method_for_the_predicted_and_a_chosen_class(client, viewer):
    from netvis.app.render.figures import map_to_array
    from netvis.saliency import gradient

    result = run_job(client, {"kind": "saliency", "image": "sample:5"})
    x = inputs(viewer, [5])
    with viewer.model_lock, torch.no_grad():
        scores = viewer.model(x)
    assert result["predicted"] == int(scores.argmax()) == result["target"]
    assert result["probabilities"] == pytest.approx(scores.softmax(1)[0].tolist(), abs=1e-5)
    assert result["label"] == int(viewer.targets[5])
    assert [m["method"] for m in result["maps"]] == client.get("/api/model").json()["methods"]
    for m in result["maps"]:
        for url in (m["url"], m["map_url"]):
            response = client.get(url)
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert png_array(response.content).shape[:2] == (28, 28)
    heat = png_array(client.get(result["maps"][1]["map_url"]).content)
    with viewer.model_lock:
        expected = map_to_array(gradient(viewer.model, x, result["target"])[0], size=(28, 28))
    assert np.array_equal(heat, (expected * 255).round().astype(np.uint8))

    other = (result["predicted"] + 3) % 10
    chosen = run_job(client, {"kind": "saliency", "image": "sample:5", "target": other, "methods": ["gradient"]})
    assert chosen["target"] == other and chosen["target_class"] == viewer.checkpoint.classes[other]
    assert [m["method"] for m in chosen["maps"]] == ["gradient"]
    heat = png_array(client.get(chosen["maps"][0]["map_url"]).content)
    with viewer.model_lock:
        expected = map_to_array(gradient(viewer.model, x, other)[0], size=(28, 28))
    assert np.array_equal(heat, (expected * 255).round().astype(np.uint8))


def test_a_method_that_fails_is_reported_and_the_others_still_shown(client, viewer, monkeypatch):
    from netvis import saliency

    def broken(model, x, target=None, **options):
        raise saliency.GuidedReLUError("this model uses a rectifier guided backprop cannot route")

    monkeypatch.setitem(saliency.METHODS, "deconvnet", broken)
    request = {"kind": "saliency", "image": "sample:40", "methods": ["gradient", "deconvnet"]}
    result = run_job(client, request)
    gradient, deconvnet = result["maps"]
    assert "url" in gradient and client.get(gradient["url"]).status_code == 200
    assert "url" not in deconvnet and deconvnet["error"].startswith("GuidedReLUError: this model uses")
    stored = [json.loads(p.read_text()) for p in viewer.cache.results.glob("saliency/*/result.json")]
    assert not any(r["image"] == "sample:40" for r in stored)  # a failure is not cached


def test_inversion_job_reports_progress_and_matches_invert(client, viewer):
    from netvis.inversion import invert, pixel_bounds

    response = client.post("/api/jobs", json={"kind": "inversion", "image": "sample:7", "layer": "layer1", "steps": 12})
    assert response.status_code == 202
    job = response.json()
    seen = [job["progress"]]
    while job["status"] in ("queued", "running"):
        job = client.get(f"/api/jobs/{job['id']}").json()
        seen.append(job["progress"])
    assert job["status"] == "done" and job["progress"] == 1.0
    assert seen == sorted(seen)
    result = job["result"]
    x = inputs(viewer, [7])
    with viewer.model_lock:
        expected = invert(viewer.model, x, "layer1", steps=12, seed=0, bounds=pixel_bounds(viewer.preprocess, 1))
    assert result["error"] == pytest.approx(expected.error, rel=1e-4)
    assert result["n_evals"] == expected.n_evals and result["error"] < result["initial_error"]
    assert png_array(client.get(result["url"]).content).shape == (28, 28)
    target = png_array(client.get(result["target_url"]).content)
    assert np.abs(target.astype(int) - viewer.images[7, 0].numpy().astype(int)).max() <= 1


def test_results_are_cached_on_disk_under_the_checkpoint_hash(client, viewer, serve_checkpoint):
    import hashlib

    from starlette.testclient import TestClient

    from netvis.app.serve import Viewer, create_app

    request = {"kind": "saliency", "image": "sample:9", "methods": ["gradient", "grad-cam"]}
    first = client.post("/api/jobs", json=request).json()
    second = client.post("/api/jobs", json=request).json()
    assert second["id"] == first["id"]  # the same computation is not started twice
    result = wait_job(client, first)["result"]
    digest = hashlib.sha256(serve_checkpoint.read_bytes()).hexdigest()[:16]
    assert viewer.cache.results.name == digest
    assert len(list(viewer.cache.results.glob("saliency/*/result.json"))) >= 1

    again = Viewer(serve_checkpoint, data="fashion-mnist-sample", limit=N_IMAGES, cache=viewer.cache.root, workers=1)
    try:
        with TestClient(create_app(again, port=8000), base_url="http://127.0.0.1:8000") as other:
            job = other.post("/api/jobs", json=request).json()
            assert job["status"] == "done" and job["cached"] is True and job["result"] == result
            assert other.get(result["maps"][0]["url"]).status_code == 200
    finally:
        again.close()


@pytest.mark.parametrize(("request_body", "field", "fragment"), [
    ({"kind": "nope"}, "kind", "must be one of examples, filters, saliency, inversion"),
    ({"kind": "examples", "layer": "layer9"}, "layer", "unknown layer 'layer9'"),
    ({"kind": "examples", "layer": "layer1", "k": 0}, "k", "greater than or equal to 1"),
    ({"kind": "filters", "layer": "layer1", "channel": 4}, "channel", "must be an integer in [0, 3]"),
    ({"kind": "saliency", "image": "sample:64"}, "image", "sample:0..sample:63"),
    ({"kind": "saliency", "image": "upload:0123456789abcdef"}, "image", "no such uploaded image"),
    ({"kind": "saliency", "image": "../etc/passwd"}, "image", "must be sample:N or upload:<id>"),
    ({"kind": "saliency", "image": "sample:1", "target": 10}, "target", "must be an integer in [0, 9]"),
    ({"kind": "saliency", "image": "sample:1", "methods": ["lime"]}, "methods.0", "'occlusion'"),
    ({"kind": "inversion", "image": "sample:1", "layer": "layer1", "steps": 0}, "steps", "greater than or equal"),
    ([1, 2], "body", "JSON object"),
])
def test_bad_job_requests_are_refused_with_a_message(client, request_body, field, fragment):
    response = client.post("/api/jobs", json=request_body)
    assert response.status_code == 422
    payload = response.json()
    assert fragment in payload["error"] and payload["error"].startswith(f"{field}: ")
    assert payload["errors"][0]["field"] == field


def test_job_requests_must_be_json(client):
    assert client.post("/api/jobs", content=b'{"kind": "examples"}', headers={"content-type": "text/plain"}
                       ).status_code == 415
    response = client.post("/api/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "invalid JSON" in response.json()["error"]
    assert client.get("/api/jobs/0000").status_code == 404


def test_uploads_are_resized_to_the_data_and_can_be_explained(client, viewer):
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:, 30:] = 255
    for fmt, content_type in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        response = client.post("/api/images", content=png_bytes(rgb, fmt), headers={"content-type": content_type})
        assert response.status_code == 201, response.text
        upload = response.json()
        assert upload["format"] == fmt and upload["original_size"] == [60, 40] and upload["size"] == [28, 28]
        stored = png_array(client.get(upload["url"]).content)
        assert stored.shape == (28, 28)  # the data's single channel and size
        assert stored[:, :10].max() < 30 and stored[:, -10:].min() > 225
    result = run_job(client, {"kind": "saliency", "image": upload["ref"], "methods": ["gradient"]})
    x = viewer.preprocess(torch.from_numpy(stored.copy())[None, None])
    with viewer.model_lock, torch.no_grad():
        assert result["predicted"] == int(viewer.model(x).argmax())
    assert result["label"] is None
    assert client.get("/api/images/0123456789abcdef.png").status_code == 404
    assert client.get("/api/images/..%2f..%2fx.png").status_code in (403, 404)


def test_cli_serve_refuses_a_remote_address_without_the_flag(monkeypatch, serve_checkpoint, tmp_path):
    import uvicorn
    from click.testing import CliRunner

    from netvis.app.cli import main

    runner = CliRunner()
    refused = runner.invoke(main, ["serve", str(serve_checkpoint), "--host", "0.0.0.0"])
    assert refused.exit_code != 0 and "--allow-remote" in refused.output

    started = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.update(host=self.config.host,
                                                                                         port=self.config.port))
    allowed = runner.invoke(main, ["serve", str(serve_checkpoint), "--host", "0.0.0.0", "--port", "8123",
                                   "--allow-remote", "--data", "fashion-mnist-sample", "--limit", "8",
                                   "--cache", str(tmp_path)])
    assert allowed.exit_code == 0, allowed.output
    assert "WARNING" in allowed.output and "no authentication" in allowed.output
    assert "http://127.0.0.1:8123/" in allowed.output
    assert started == {"host": "0.0.0.0", "port": 8123}
