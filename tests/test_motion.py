"""Dance motion files (`avtool.media.motion`): AIST++ SMPL pickles through the restricted unpickler, the 219-d
features against an independent Rodrigues computation, and every bad file refused with exit 2 naming it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from scipy.linalg import expm

from avtool.errors import BadInput
from avtool.media.motion import FEATURES, axis_angle_to_matrix, load_pickle, read_motion, smpl_features


def aistpp_dict(frames: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"smpl_loss": 1.25, "smpl_poses": rng.normal(0, 1.2, (frames, 72)),
            "smpl_trans": rng.normal(0, 50, (frames, 3)), "smpl_scaling": np.array([93.5])}


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def test_rotations_equal_the_matrix_exponential_of_the_cross_product_matrix():
    rng = np.random.default_rng(1)
    vectors = np.concatenate([rng.normal(0, 1.5, (200, 3)), rng.normal(0, 1e-6, (20, 3)), np.zeros((1, 3)),
                              np.array([[np.pi, 0, 0], [0, 1e-4, 0]])])
    ours = axis_angle_to_matrix(vectors)
    for v, matrix in zip(vectors, ours, strict=True):
        np.testing.assert_allclose(matrix, expm(skew(v)), atol=1e-12)
    np.testing.assert_allclose(ours @ ours.transpose(0, 2, 1), np.broadcast_to(np.eye(3), ours.shape), atol=1e-12)


def test_features_are_scaled_translation_then_row_major_joint_rotations():
    motion = aistpp_dict()
    features = smpl_features(motion["smpl_poses"], motion["smpl_trans"], 93.5)
    assert features.shape == (40, FEATURES)
    np.testing.assert_allclose(features[:, :3], motion["smpl_trans"] / 93.5)
    frame, joint = 7, 13
    by_hand = expm(skew(motion["smpl_poses"][frame, 3 * joint : 3 * joint + 3]))
    np.testing.assert_allclose(features[frame, 3 + 9 * joint : 12 + 9 * joint], by_hand.reshape(9), atol=1e-12)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_aistpp_pickles_of_every_protocol_load(tmp_path, protocol):
    motion = aistpp_dict()
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    path.write_bytes(pickle.dumps(motion, protocol=protocol))
    features = read_motion(path, min_frames=40)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, smpl_features(motion["smpl_poses"], motion["smpl_trans"], 93.5), rtol=1e-6)


def test_numpy_scalars_and_nested_plain_values_load(tmp_path):
    path = tmp_path / "values.pkl"
    path.write_bytes(pickle.dumps({"a": np.float32(2.5), "b": [1, "x", (np.arange(3),)]}))
    content = load_pickle(path)
    assert content["a"] == np.float32(2.5) and content["b"][1] == "x"
    np.testing.assert_array_equal(content["b"][2][0], np.arange(3))


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_needing_code_is_refused_and_its_payload_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({**aistpp_dict(), "x": Payload()}))
    with pytest.raises(BadInput, match=r"evil\.pkl: refused: it needs (posix|os)\.system"):
        read_motion(path)
    assert not (tmp_path / "PWNED").exists()


def test_an_object_array_smuggling_code_is_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"smpl_poses": np.array([Payload()], dtype=object)}))
    with pytest.raises(BadInput, match="refused"):
        read_motion(path)


def test_ready_features_load_as_they_are(tmp_path):
    features = np.random.default_rng(2).normal(size=(30, FEATURES)).astype(np.float32)
    np.save(tmp_path / "dance.npy", features)
    np.testing.assert_array_equal(read_motion(tmp_path / "dance.npy", min_frames=30), features)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("short.npy", np.zeros((20, FEATURES)), r"20 motion frames \(0\.33 s at 60 fps\), fewer than one window of 30"),
    ("wide.npy", np.zeros((40, 225)), r"must be \(frames, 219\), got \(40, 225\)"),
    ("flat.npy", np.zeros(219), r"must be \(frames, 219\), got \(219,\)"),
    ("nan.npy", np.full((40, FEATURES), np.nan), "NaN or infinite"),
    ("objects.npy", np.array([{"a": 1}], dtype=object), "holds pickled objects"),
    ("nodict.pkl", [1, 2], r"not an AIST\+\+ motion file"),
    ("nokeys.pkl", {"poses": np.zeros((40, 72))}, "needs smpl_poses, smpl_trans, smpl_scaling"),
    ("poses.pkl", {**aistpp_dict(), "smpl_poses": np.zeros((40, 69))}, r"smpl_poses must be \(frames, 72\)"),
    ("trans.pkl", {**aistpp_dict(), "smpl_trans": np.zeros((39, 3))}, r"smpl_trans must be \(40, 3\)"),
    ("scale.pkl", {**aistpp_dict(), "smpl_scaling": np.array([0.0])}, "smpl_scaling must be one positive number"),
    ("text.pkl", {**aistpp_dict(), "smpl_poses": np.array([["a"] * 72] * 40)}, "must be numbers"),
    ("nanpose.pkl", {**aistpp_dict(), "smpl_poses": np.full((40, 72), np.inf)}, "NaN or infinite"),
])
def test_bad_motion_files_are_refused_naming_the_file_and_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, content, allow_pickle=True)
    else:
        path.write_bytes(pickle.dumps(content))
    with pytest.raises(BadInput, match=message) as error:
        read_motion(path, min_frames=30)
    assert error.value.message.startswith(str(path))


@pytest.mark.parametrize(("name", "data", "message"), [
    ("cut.pkl", pickle.dumps(aistpp_dict())[:200], "cannot read the motion pickle"),
    ("junk.npy", b"not numpy", "cannot read the motion array"),
    ("dance.bvh", b"HIERARCHY", r"not a motion file \(\.pkl, \.npy\)"),
])
def test_unreadable_files_are_refused(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(BadInput, match=message):
        read_motion(tmp_path / name)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BadInput, match="no such motion file"):
        read_motion(tmp_path / "nope.pkl")
    (tmp_path / "dir.pkl").mkdir()
    with pytest.raises(BadInput, match="not a file"):
        read_motion(tmp_path / "dir.pkl")
