"""Flat-feature data sets for fully connected nets: MNIST-style IDX files, Speech Commands.

- ``mnist``: the standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally ``.gz``) under
  ``data.root``; any MNIST-style set in that format (Fashion-MNIST, KMNIST) reads the same.
- ``speech``: Google Speech Commands v0.02 from a local copy (``<root>/<word>/*.wav``): the
  35 words, 1-second 16 kHz clips (padded or cut to 16000 samples), a 128-bin log-mel
  spectrogram in dB (n_fft 2048, hop 512, Slaney mel filters, dB relative to each clip's
  maximum, floor -80 dB: librosa's defaults, as the IST code used librosa) giving
  128 x 32 = 4096 features, and the data set's hash-based split (SHA-1 of the speaker
  part of the file name; 20 % test). Features are computed once and cached under
  ``<root>/.commbench-cache/``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import struct
from pathlib import Path

import numpy as np
import torch

SPEECH_WORDS = (
    "backward",
    "bed",
    "bird",
    "cat",
    "dog",
    "down",
    "eight",
    "five",
    "follow",
    "forward",
    "four",
    "go",
    "happy",
    "house",
    "learn",
    "left",
    "marvin",
    "nine",
    "no",
    "off",
    "on",
    "one",
    "right",
    "seven",
    "sheila",
    "six",
    "stop",
    "three",
    "tree",
    "two",
    "up",
    "visual",
    "wow",
    "yes",
    "zero",
)
SAMPLE_RATE, N_FFT, HOP, N_MELS = 16000, 2048, 512, 128
_MAX_WAVS = 2**27 - 1


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimensions, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path.name} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise ValueError(f"{path.name}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def find_idx(root: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        for candidate in (root / name, root / "raw" / name):
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"{stem}[.gz] not found under {root}")


def speech_split(filename: str, test_percent: float = 20.0) -> str:
    """The data set's own split rule: hash the speaker part, so a speaker stays on one side."""
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    digest = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    percent = (digest % (_MAX_WAVS + 1)) * (100.0 / _MAX_WAVS)
    return "test" if percent < test_percent else "train"


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = f / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f / min_log_hz) / logstep, mel)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(
        m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m
    )


def mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """Slaney-style triangular mel filters, area-normalised: (n_mels, n_fft // 2 + 1)."""
    fft_freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = _hz_to_mel(torch.tensor(sr / 2.0, dtype=torch.float64))
    hz = _mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1] - hz[:-2])[:, None]
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:] - hz[1:-1])[:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    return (weights * (2.0 / (hz[2:] - hz[:-2]))[:, None]).float()


def log_mel(waves: torch.Tensor) -> torch.Tensor:
    """(N, 16000) waveforms → (N, 128, 32) log-mel spectrograms in dB (ref: each clip's max)."""
    spec = (
        torch.stft(
            waves,
            N_FFT,
            HOP,
            window=torch.hann_window(N_FFT),
            center=True,
            pad_mode="constant",
            return_complex=True,
        ).abs()
        ** 2
    )
    mel = mel_filters() @ spec
    db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
    db = db - db.amax(dim=(1, 2), keepdim=True)
    return torch.clamp(db, min=-80.0)


def read_wav(path: Path) -> torch.Tensor:
    """A mono 16-bit 16 kHz WAV as float samples in [-1, 1], padded or cut to one second."""
    from scipy.io import wavfile

    rate, data = wavfile.read(path)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path} has sample rate {rate}, expected {SAMPLE_RATE}")
    wave = torch.from_numpy(data.astype(np.float32) / 32768.0)
    if wave.ndim != 1:
        raise ValueError(f"{path} is not mono")
    return torch.nn.functional.pad(wave[:SAMPLE_RATE], (0, max(0, SAMPLE_RATE - len(wave))))


def speech_features(root: Path, batch: int = 256) -> dict[str, torch.Tensor]:
    """Features and labels of both splits, computed once and cached under ``root``."""
    files = sorted(p for w in SPEECH_WORDS for p in (root / w).glob("*.wav"))
    if not files:
        raise FileNotFoundError(
            f"no <word>/*.wav clips of the 35 Speech Commands words under {root}"
        )
    key = hashlib.sha1("\n".join(str(p.relative_to(root)) for p in files).encode()).hexdigest()[:12]
    cache = root / ".commbench-cache" / f"speech-{N_MELS}x32-{key}.pt"
    if cache.exists():
        return dict(torch.load(cache, weights_only=True))
    feats, labels, splits = [], [], []
    for i in range(0, len(files), batch):
        chunk = files[i : i + batch]
        feats.append(log_mel(torch.stack([read_wav(p) for p in chunk])))
        labels += [SPEECH_WORDS.index(p.parent.name) for p in chunk]
        splits += [speech_split(p.name) for p in chunk]
    x, y = torch.cat(feats).unsqueeze(1), torch.tensor(labels)
    test = torch.tensor([s == "test" for s in splits])
    out = {"train_x": x[~test], "train_y": y[~test], "test_x": x[test], "test_y": y[test]}
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(cache)
    return out
