"""Dance motion files for Dance2Music-Diffusion: AIST++ SMPL `.pkl` files and ready `(N, 219)` `.npy` features.

D2M's per-frame motion feature (the FACT/AIST++ layout, 60 fps) is 219 numbers: the root translation divided by
the SMPL scale (3), then the 24 joints' axis-angle rotations as row-major 3x3 matrices (216). AIST++ `.pkl`
files hold `smpl_poses (N, 72)`, `smpl_trans (N, 3)` and `smpl_scaling (1,)`; they are read with a restricted
unpickler that rebuilds numpy arrays and plain values only, so a pickle that needs any other code is refused and
its payload never runs. numpy only: a bad motion file is refused before torch is imported.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput

MOTION_FPS = 60
FEATURES = 219
JOINTS = 24
MOTION_SUFFIXES = (".pkl", ".npy")


def read_motion(path: Path, min_frames: int = 1) -> np.ndarray:
    """The `(N, 219)` float32 motion features of an AIST++ `.pkl` or a ready `.npy` file.

    BadInput (exit 2) naming the file for a missing or unreadable file, a pickle needing code, a wrong shape,
    NaN or infinite values, or fewer than `min_frames` frames.
    """
    check_motion_file(path)
    if path.suffix.lower() == ".npy":
        features = _load_npy(path)
        if features.ndim != 2 or features.shape[1] != FEATURES:
            raise BadInput(f"{path}: motion features must be (frames, {FEATURES}), got {features.shape}",
                           hint="give an AIST++ .pkl, or an .npy of D2M's 219-d per-frame features")
    else:
        features = smpl_features(*_smpl_arrays(path, load_pickle(path)))
    features = features.astype(np.float32)
    if not np.isfinite(features).all():
        raise BadInput(f"{path}: the motion holds NaN or infinite values", hint="check the file's export")
    if len(features) < min_frames:
        raise BadInput(f"{path}: {len(features)} motion frames ({len(features) / MOTION_FPS:.2f} s at {MOTION_FPS} fps), "
                       f"fewer than one window of {min_frames} ({min_frames / MOTION_FPS:.2f} s)",
                       hint="give a longer dance")
    return features


def check_motion_file(path: Path) -> None:
    """BadInput (exit 2) unless `path` is an existing `.pkl` or `.npy` file."""
    if not path.is_file():
        raise BadInput(f"{path}: no such motion file" if not path.exists() else f"{path}: not a file", hint="check the path")
    if path.suffix.lower() not in MOTION_SUFFIXES:
        raise BadInput(f"{path}: not a motion file ({', '.join(MOTION_SUFFIXES)})",
                       hint="d2m takes a dance's AIST++ SMPL motion (.pkl) or its (frames, 219) features (.npy); videos go to --model vidmuse")


def smpl_features(poses: np.ndarray, trans: np.ndarray, scaling: float) -> np.ndarray:
    """D2M's `(N, 219)` features from SMPL axis-angle poses `(N, 72)`, translations `(N, 3)` and the scale."""
    rotations = axis_angle_to_matrix(poses.reshape(len(poses), JOINTS, 3).astype(np.float64))
    return np.concatenate([trans / scaling, rotations.reshape(len(poses), JOINTS * 9)], axis=1)


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices `(..., 3, 3)` of axis-angle vectors `(..., 3)` (Rodrigues' formula).

    R = I + sin(t)/t K + (1 - cos(t))/t^2 K^2 with K the cross-product matrix of the vector and t its norm; the two
    coefficients switch to their Taylor series near t = 0, where the closed forms lose all precision.
    """
    angle = np.linalg.norm(rotvec, axis=-1)[..., None, None]
    x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
    zero = np.zeros_like(x)
    cross = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*rotvec.shape[:-1], 3, 3)
    small = angle < 1e-4
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1 - angle**2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - angle**2 / 24, (1 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * cross + b * (cross @ cross)


# --------------------------------------------------------------------------------------------------------------
# Reading files


class _Refused(pickle.UnpicklingError):
    """The pickle needs something the restricted unpickler does not rebuild."""


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x pickles
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x pickles
            ("numpy.core.multiarray", "scalar"): _scalar,
            ("numpy._core.multiarray", "scalar"): _scalar,
            ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol-5 pickles
            ("numpy._core.numeric", "_frombuffer"): _frombuffer,
            ("_codecs", "encode"): _latin1_bytes,  # protocol-2 pickles carry array bytes as latin-1 text
        }
        if (module, name) not in allowed:
            raise _Refused(f"it needs {module}.{name}")
        return allowed[(module, name)]


def _reconstruct(cls: type, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise _Refused(f"it rebuilds a {cls!r}, not a numpy array")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise _Refused("it holds a numpy scalar of objects")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("it holds an array of objects")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("it calls _codecs.encode other than for array bytes")
    return text.encode("latin1")


def load_pickle(path: Path) -> Any:
    """A pickle's content if it is made of numpy arrays and plain values only; BadInput otherwise (nothing runs)."""
    try:
        data = path.read_bytes()
        return _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except _Refused as error:
        raise BadInput(f"{path}: refused: {error}; a motion pickle may hold numpy arrays and plain values only, "
                       "and avtool never runs pickled code", hint="convert it to a (frames, 219) .npy in a trusted environment") from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise BadInput(f"{path}: cannot read the motion pickle ({type(error).__name__}: {error})"[:300]) from None


def _smpl_arrays(path: Path, content: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """(poses (N, 72), trans (N, 3), scaling) of an AIST++ motion dict, checked."""
    keys = ("smpl_poses", "smpl_trans", "smpl_scaling")
    if not isinstance(content, dict) or not all(key in content for key in keys):
        found = sorted(map(str, content))[:6] if isinstance(content, dict) else type(content).__name__
        raise BadInput(f"{path}: not an AIST++ motion file (needs {', '.join(keys)}; found {found})")
    poses, trans, scaling = (np.asarray(content[key]) for key in keys)
    if poses.dtype.kind not in "fiu" or trans.dtype.kind not in "fiu" or scaling.dtype.kind not in "fiu":
        raise BadInput(f"{path}: the SMPL arrays must be numbers")
    if poses.ndim != 2 or poses.shape[1] != JOINTS * 3:
        raise BadInput(f"{path}: smpl_poses must be (frames, {JOINTS * 3}) axis-angle, got {poses.shape}")
    if trans.shape != (len(poses), 3):
        raise BadInput(f"{path}: smpl_trans must be ({len(poses)}, 3) like smpl_poses, got {trans.shape}")
    if scaling.size != 1 or not 0 < float(scaling.reshape(-1)[0]) < np.inf:
        raise BadInput(f"{path}: smpl_scaling must be one positive number, got {scaling.reshape(-1)[:3]}")
    if not (np.isfinite(poses).all() and np.isfinite(trans).all()):
        raise BadInput(f"{path}: the motion holds NaN or infinite values", hint="check the file's export")
    return poses, trans, float(scaling.reshape(-1)[0])


def _load_npy(path: Path) -> np.ndarray:
    try:
        with path.open("rb") as file:
            if file.read(6) != b"\x93NUMPY":
                raise BadInput(f"{path}: cannot read the motion array (not a .npy file)")
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise BadInput(f"{path}: refused: this .npy holds pickled objects, which avtool never loads") from None
        raise BadInput(f"{path}: cannot read the motion array ({error})"[:300]) from None
    except (OSError, EOFError) as error:
        raise BadInput(f"{path}: cannot read the motion array ({error})"[:300]) from None
