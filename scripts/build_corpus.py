"""Rebuild the demo model's training corpus from Debian's free game-music packages.

    nice python scripts/build_corpus.py --out .data/corpus

Downloads the ten packages of issue 11 with `apt-get download` (no root needed, ~760 MB into
--work), unpacks them with `dpkg-deb -x`, reads each package's copyright file, finds the music,
and writes excerpts as Opus in Ogg (48 kHz stereo, --kbps) with a manifest:

    OUT/manifest.json                 every excerpt: package, source, licence, offset, split, size
    OUT/licences/PACKAGE.copyright    each package's copyright file, as shipped
    OUT/train/PACKAGE/NAME.ogg        training excerpts
    OUT/holdout/NAME.ogg              held-out excerpts (one folder, so `musicguide evaluate
                                      OUT/holdout --tracks eval/holdout.txt` reads them)

Opus stores 48 kHz only; training and evaluation read the files at 44.1 kHz (musicguide.audio
resamples). Everything fits --budget-mib: the packages hold about 17 hours, so each package gets
an equal share of the budget (what a small package cannot use goes to the others), filled with
the first --excerpt-seconds of its tracks in a fixed pseudo-random order (SHA-1 of the name).

Trained on: only tracks under --train-licence (default GPL-2+, GPL-3+ and public domain, so that
the weights can be GPL-3.0-or-later; TRAINING_LICENCES says why the others are not). Tracks
under other licences can still be held out.

Held out: every name listed in eval/holdout.txt, and for each package without one there, the
track whose name hashes lowest among those long enough (the script prints the line to add).
Held-out excerpts are --holdout-seconds from the middle of the track; a training track of the
same family (battle / battle-epic, track3 / track3_enhanced) is left out entirely.

The same packages and settings give the same corpus: the same excerpts, decoding to the same
samples (the files differ only in the random serial numbers of their Ogg streams).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
HOLDOUT_LIST = REPO / "eval" / "holdout.txt"

# Where each package keeps its music. "ARCHIVE:GLOB" looks inside a zip (Quake-style .pk3).
# Other audio in these packages is sound effects (hyperrogue's sounds/, drascula's language
# folders are links to audio/).
MUSIC_GLOBS: dict[str, tuple[str, ...]] = {
    "warzone2100-music": ("usr/share/games/warzone2100/music/**/*.opus",),
    "ufoai-music": ("usr/share/games/ufoai/base/0music.pk3:music/*.ogg",),
    "singularity-music": ("usr/share/games/singularity/music/**/*.ogg",),
    "nexuiz-music": ("usr/share/games/nexuiz/data/music.pk3:sound/cdtracks/*.ogg",),
    "asc-music": ("usr/share/games/asc/music/*.mp3",),
    "hyperrogue-music": ("usr/share/hyperrogue/music/*.ogg",),
    "planetblupi-music-ogg": ("usr/share/planetblupi/music/*.ogg",),
    "drascula-music": ("usr/share/scummvm/drascula/audio/*.ogg",),
    "xblast-tnt-musics": ("usr/share/games/xblast-tnt/sounds/xbsng*.raw",),
    "wesnoth-1.16-music": ("usr/share/games/wesnoth/1.16/data/core/music/*.ogg",),
}
PACKAGES = tuple(MUSIC_GLOBS)
# XBlast's songs are headerless: unsigned 8-bit stereo at 22.05 kHz (its sdl_sound.c plays them so).
RAW_FORMATS = {"xblast-tnt-musics": dict(format="RAW", subtype="PCM_U8", channels=2, samplerate=22050)}
# Corpus names are "<prefix>-<track>", unique across packages. Wesnoth's keep their bare names:
# eval/holdout.txt, the demo model's README and the clips in ../shared/audio already use them.
NAME_PREFIXES = {"wesnoth-1.16-music": ""}

OPUS_RATE = 48000  # the only full-band rate Ogg Opus stores
MIN_SOURCE_RATE = 22050  # below this a track has nothing above 5.5 kHz: it would teach dullness
MIN_TRACK_SECONDS = 15.0  # a DiT window is 11.9 s; shorter cues are jingles and would be padded
OVERHEAD_MARGIN = 0.04  # Ogg pages and VBR swing: plan the audio 4 % under the byte budget
# The licences of the tracks the model trains on; they decide the weights' licence. The weights are
# taken to be a derivative of every training track, so their licence must honour them all at once:
# GPL-2-or-later and GPL-3-or-later music combine under GPL-3.0-or-later, the licence the demo
# weights ship under. GPL-2-only (XBlast, two UFO:AI composers) cannot combine with GPL-3, nor
# CC-BY-SA-3.0 (Singularity, HyperRogue) with either GPL; the Drascula licence makes modified
# versions keep its own terms; CC-BY-3.0 (UFO:AI's van_* tracks) has an anti-DRM clause that is why
# only CC BY 4.0 is listed as GPL-compatible. Tracks under those licences are still held out for
# evaluation (using them to measure is not distributing a derivative); they are never trained on.
# docs/training.md, "The licence", has the decision and its cost.
TRAINING_LICENCES = ("GPL-2+", "GPL-3+", "public-domain")
MODEL_LICENCE = "GPL-3.0-or-later"
# A family is a track and its variants; holding one out holds out all of them.
VARIANT_SUFFIX = re.compile(r"([-_ ]+(enhanced|revisited|old|epic))+$|_+$")


# --- Licences -------------------------------------------------------------------------------------

def dep5_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a machine-readable (DEP-5) copyright file: field -> value, continuation
    lines joined with newlines."""
    paragraphs, current, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def dep5_licence(paragraphs: list[dict[str, str]], path: str) -> str | None:
    """The short licence name of the last Files paragraph matching `path` (DEP-5: the last match
    wins). A pattern also matches the end of the installed path, since copyright files name the
    upstream layout (base/music/x.ogg) and packages install under usr/share/..."""
    found = None
    for paragraph in paragraphs:
        patterns = paragraph.get("Files", "").split()
        if any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, "*/" + p) for p in patterns):
            found = paragraph.get("License", "").split("\n")[0].strip() or None
    return found


# Licence notices in free-form copyright files, as these packages word them. The earliest in the
# file is the package's own (later ones are about bundled fonts and code).
TEXT_NOTICES = (
    ("GPL-2+", r"General Public License.{0,100}?version 2.{0,40}?or \(?at your option\)? any later version"),
    ("GPL-2", r"General Public License.{0,100}?version 2 dated June,? 1991"),
    ("CC-BY-SA-3.0", r"CREATIVE COMMONS PUBLIC LICENSE.*?License Elements.{0,200}?Attribution, ShareAlike"),
)


def text_licence(text: str) -> str | None:
    flat = " ".join(text.split())
    hits = [(m.start(), name) for name, pattern in TEXT_NOTICES if (m := re.search(pattern, flat, re.S))]
    return min(hits)[1] if hits else None


@dataclass
class Copyright:
    text: str
    machine_readable: bool
    paragraphs: list[dict[str, str]]

    @classmethod
    def read(cls, path: Path) -> "Copyright":
        text = path.read_text(errors="replace")
        machine_readable = text.startswith("Format:")
        return cls(text, machine_readable, dep5_paragraphs(text) if machine_readable else [])

    def licence_of(self, path: str) -> str:
        found = dep5_licence(self.paragraphs, path) if self.machine_readable else text_licence(self.text)
        return found or "unknown"


# --- Packages and their tracks ---------------------------------------------------------------------

def short_name(package: str) -> str:
    return re.sub(r"-music(s|-ogg)?$", "", package)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_")


def corpus_name(package: str, stem: str) -> str:
    prefix = NAME_PREFIXES.get(package, short_name(package))
    return f"{prefix}-{slug(stem)}" if prefix else slug(stem)


def family(name: str) -> str:
    return VARIANT_SUFFIX.sub("", name)


def name_hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


@dataclass(frozen=True)
class Track:
    package: str
    source: str  # path inside the package; "ARCHIVE:MEMBER" inside a zip
    name: str
    seconds: float
    rate: int
    licence: str


@dataclass
class Package:
    name: str
    version: str
    root: Path
    copyright: Path
    tracks: list[Track] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def run(command: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


def fetch(package: str, work: Path) -> Path:
    """The package's .deb in work/debs, downloaded unless already there."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if len(found) != 1:
        raise SystemExit(f"expected one {package}_*.deb in {debs}, found {len(found)}")
    return found[0]


def unpack(package: str, deb: Path, work: Path) -> Package:
    root = work / "root" / package
    if not (root / ".unpacked").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(root)])
        (root / ".unpacked").touch()
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    return Package(package, version, root, root / "usr/share/doc" / package / "copyright")


def open_sound(root: Path, source: str, package: str) -> sf.SoundFile:
    """A track of an unpacked package, open for reading (zip members are read into memory)."""
    raw = RAW_FORMATS.get(package, {})
    if ":" in source:
        archive, member = source.split(":", 1)
        with zipfile.ZipFile(root / archive) as pk3:
            return sf.SoundFile(io.BytesIO(pk3.read(member)), **raw)
    return sf.SoundFile(root / source, **raw)


def music_sources(package: Package) -> list[str]:
    sources = []
    for pattern in MUSIC_GLOBS[package.name]:
        if ":" in pattern:
            archive, member_glob = pattern.split(":", 1)
            with zipfile.ZipFile(package.root / archive) as pk3:
                sources += [f"{archive}:{m}" for m in pk3.namelist() if fnmatch.fnmatchcase(m, member_glob)]
        else:
            sources += [p.relative_to(package.root).as_posix() for p in package.root.glob(pattern)
                        if p.is_file() and not p.is_symlink()]
    return sorted(sources)


def licence_path(source: str) -> str:
    """The path a copyright file's Files patterns are matched against: zip members as if unpacked
    beside the archive (ufoai's 0music.pk3:music/x.ogg is upstream's base/music/x.ogg)."""
    if ":" not in source:
        return source
    archive, member = source.split(":", 1)
    return f"{Path(archive).parent.as_posix()}/{member}"


def find_tracks(package: Package) -> None:
    """Every music file of the package that can be used, and why the others cannot."""
    copyright = Copyright.read(package.copyright)
    for source in music_sources(package):
        name = corpus_name(package.name, Path(source.split(":")[-1]).stem)
        licence = copyright.licence_of(licence_path(source))
        try:
            with open_sound(package.root, source, package.name) as sound:
                seconds, rate = sound.frames / sound.samplerate, sound.samplerate
        except sf.SoundFileError as error:
            package.skipped.append({"source": source, "name": name, "reason": f"libsndfile cannot decode it: {error}"})
            continue
        if rate < MIN_SOURCE_RATE:
            reason = f"sampled at {rate} Hz, below {MIN_SOURCE_RATE} Hz"
        elif seconds < MIN_TRACK_SECONDS:
            reason = f"{seconds:.1f} s, shorter than {MIN_TRACK_SECONDS:g} s"
        else:
            package.tracks.append(Track(package.name, source, name, seconds, rate, licence))
            continue
        package.skipped.append({"source": source, "name": name, "reason": reason})
    names = [t.name for t in package.tracks]
    if len(set(names)) != len(names):
        raise SystemExit(f"{package.name}: two tracks share a corpus name: {sorted(names)}")


# --- Choosing what goes in -------------------------------------------------------------------------

@dataclass(frozen=True)
class Excerpt:
    track: Track
    split: str  # "train" or "holdout"
    offset_s: float
    seconds: float

    @property
    def file(self) -> str:
        if self.split == "holdout":
            return f"holdout/{self.track.name}.ogg"
        return f"train/{self.track.package}/{self.track.name}.ogg"


def read_holdout_list(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def choose_holdout(tracks: list[Track], listed: set[str], holdout_seconds: float) -> list[Track]:
    """The package's tracks named in the holdout list; if none, the long-enough track whose name
    hashes lowest."""
    named = [t for t in tracks if t.name in listed]
    if named:
        return named
    long_enough = [t for t in tracks if t.seconds >= holdout_seconds]
    return [min(long_enough, key=lambda t: name_hash(t.name))] if long_enough else []


def holdout_excerpt(track: Track, seconds: float) -> Excerpt:
    length = min(seconds, track.seconds)
    return Excerpt(track, "holdout", (track.seconds - length) / 2, length)


def training_order(tracks: list[Track], held_out: list[Track], licences: set[str]) -> list[Track]:
    """The package's training tracks (under one of `licences`, no family member of a held-out one),
    in hash order."""
    held_families = {family(t.name) for t in held_out}
    return sorted((t for t in tracks if t.licence in licences and family(t.name) not in held_families),
                  key=lambda t: name_hash(t.name))


def fair_shares(available: dict[str, float], total: float) -> dict[str, float]:
    """Split `total` seconds equally between packages; what a package cannot use (it has less
    than its share) is split again between the others (water-filling)."""
    shares, left, open_ = {}, total, sorted(available, key=available.get)
    while open_:
        share = left / len(open_)
        package = open_[0]
        if available[package] > share:
            shares.update({p: share for p in open_})
            break
        shares[package] = available[package]
        left -= available[package]
        open_.pop(0)
    return shares


def fill(tracks: list[Track], share: float, excerpt_seconds: float) -> list[Excerpt]:
    """The first `excerpt_seconds` of each track in turn until `share` seconds are used; the last
    one shortened to fit, unless that would leave less than MIN_TRACK_SECONDS."""
    chosen, left = [], share
    for track in tracks:
        seconds = min(track.seconds, excerpt_seconds, left)
        if seconds < MIN_TRACK_SECONDS:
            break
        chosen.append(Excerpt(track, "train", 0.0, seconds))
        left -= seconds
    return chosen


@dataclass(frozen=True)
class Settings:
    budget_bytes: int
    kbps: float
    excerpt_seconds: float
    holdout_seconds: float

    @property
    def seconds_budget(self) -> float:
        return self.budget_bytes * 8 / (self.kbps * 1000) * (1 - OVERHEAD_MARGIN)


def plan(packages: list[Package], listed: set[str], settings: Settings,
         licences: set[str] = frozenset(TRAINING_LICENCES)) -> tuple[list[Excerpt], list[str]]:
    """Every excerpt to write, and the held-out names the holdout list lacks. Held-out tracks are
    chosen among all of a package's tracks; training excerpts only among those under `licences`."""
    known = {t.name for p in packages for t in p.tracks} | {s["name"] for p in packages for s in p.skipped}
    unknown = listed - known
    if unknown:
        raise SystemExit(f"the holdout list names tracks that no package has: {sorted(unknown)}")
    holdout = {p.name: choose_holdout(p.tracks, listed, settings.holdout_seconds) for p in packages}
    unlisted = [t.name for p in packages for t in holdout[p.name] if t.name not in listed]
    held = [holdout_excerpt(t, settings.holdout_seconds) for p in packages for t in holdout[p.name]]
    orders = {p.name: training_order(p.tracks, holdout[p.name], licences) for p in packages}
    available = {name: sum(min(t.seconds, settings.excerpt_seconds) for t in order) for name, order in orders.items()}
    train_seconds = settings.seconds_budget - sum(e.seconds for e in held)
    if train_seconds <= 0:
        raise SystemExit("the held-out excerpts alone exceed the budget: raise --budget-mib or lower --holdout-seconds")
    shares = fair_shares(available, train_seconds)
    trained = [e for p in packages for e in fill(orders[p.name], shares[p.name], settings.excerpt_seconds)]
    return held + trained, unlisted


# --- Writing ----------------------------------------------------------------------------------------

def compression_level(kbps: float, channels: int = 2) -> float:
    """libsndfile's Opus setting for a bitrate: it maps level 0..1 linearly onto 512 kbit/s down
    to 6 kbit/s per channel (measured: 0.896 gives 65 kbit/s on stereo orchestral music)."""
    low, high = 6.0 * channels, 512.0
    return min(1.0, max(0.0, (high - kbps) / (high - low)))


def to_stereo(audio: np.ndarray) -> np.ndarray:
    if audio.shape[1] == 1:
        return np.repeat(audio, 2, axis=1)
    return audio[:, :2]


@dataclass(frozen=True)
class Job:
    root: str
    excerpt: Excerpt
    out: str
    kbps: float


def write_excerpt(job: Job) -> int:
    """Decode the excerpt, resample it to 48 kHz stereo, write it as Opus; returns its bytes."""
    track = job.excerpt.track
    with open_sound(Path(job.root), track.source, track.package) as sound:
        sound.seek(round(job.excerpt.offset_s * sound.samplerate))
        audio = sound.read(round(job.excerpt.seconds * sound.samplerate), dtype="float32", always_2d=True)
    audio = to_stereo(audio)
    if track.rate != OPUS_RATE:
        audio = soxr.resample(audio, track.rate, OPUS_RATE, quality="HQ")
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, OPUS_RATE, format="OGG", subtype="OPUS", compression_level=compression_level(job.kbps))
    return out.stat().st_size


def manifest(packages: list[Package], excerpts: list[Excerpt], sizes: list[int], settings: Settings,
             licence_bytes: int, licences: set[str]) -> dict:
    entries = [{"file": e.file, "package": e.track.package, "source": e.track.source, "name": e.track.name,
                "split": e.split, "licence": e.track.licence, "offset_s": round(e.offset_s, 3),
                "seconds": round(e.seconds, 3), "track_seconds": round(e.track.seconds, 3),
                "source_rate": e.track.rate, "bytes": size} for e, size in zip(excerpts, sizes)]
    summary = {}
    for package in packages:
        mine = [entry for entry in entries if entry["package"] == package.name]
        summary[package.name] = {
            "version": package.version,
            "licences": sorted({entry["licence"] for entry in mine}),
            "tracks_usable": len(package.tracks),
            "minutes_usable": round(sum(t.seconds for t in package.tracks) / 60, 1),
            "skipped": package.skipped,
            **{f"{split}_tracks": sum(entry["split"] == split for entry in mine) for split in ("train", "holdout")},
            **{f"{split}_seconds": round(sum(entry["seconds"] for entry in mine if entry["split"] == split), 1)
               for split in ("train", "holdout")},
            "bytes": sum(entry["bytes"] for entry in mine),
        }
    audio_bytes, seconds = sum(sizes), sum(e.seconds for e in excerpts)
    return {"built_by": "scripts/build_corpus.py", "settings": asdict(settings),
            "training_licences": sorted(licences),
            "sample_rate": OPUS_RATE, "channels": 2, "format": "Ogg Opus",
            "seconds": round(seconds, 1), "audio_bytes": audio_bytes, "licence_bytes": licence_bytes,
            "measured_kbps": round(audio_bytes * 8 / seconds / 1000, 1),
            "packages": summary, "tracks": entries}


def write_corpus(packages: list[Package], excerpts: list[Excerpt], settings: Settings, out: Path,
                 jobs: int, licences: set[str]) -> dict:
    (out / "licences").mkdir(parents=True)
    for package in packages:
        shutil.copyfile(package.copyright, out / "licences" / f"{package.name}.copyright")
    licence_bytes = sum(p.stat().st_size for p in (out / "licences").iterdir())
    roots = {p.name: str(p.root) for p in packages}
    work = [Job(roots[e.track.package], e, str(out / e.file), settings.kbps) for e in excerpts]
    with ProcessPoolExecutor(jobs) as pool:
        sizes = list(pool.map(write_excerpt, work))
    data = manifest(packages, excerpts, sizes, settings, licence_bytes, licences)
    (out / "manifest.json").write_text(json.dumps(data, indent=1) + "\n")
    return data


def report(data: dict, unlisted: list[str], budget_bytes: int) -> None:
    print(f"{'package':24} {'licences':34} {'train':>13} {'held out':>12} {'MiB':>6} {'kbit/s':>6}  skipped")
    for name, p in data["packages"].items():
        seconds = p["train_seconds"] + p["holdout_seconds"]
        kbps = p["bytes"] * 8 / seconds / 1000 if seconds else 0
        print(f"{name:24} {', '.join(p['licences']):34} {p['train_tracks']:3} {p['train_seconds'] / 60:5.1f} min "
              f"{p['holdout_tracks']:2} {p['holdout_seconds'] / 60:4.1f} min {p['bytes'] / 2**20:6.2f} {kbps:6.1f}"
              f"  {len(p['skipped'])}")
    usable = sum(p["minutes_usable"] for p in data["packages"].values())
    total = data["audio_bytes"] + data["licence_bytes"]
    print(f"total {data['seconds'] / 60:.1f} min of the {usable:.0f} usable ({data['measured_kbps']} kbit/s): "
          f"{total / 2**20:.2f} MiB of the {budget_bytes / 2**20:.0f} MiB budget")
    if unlisted:
        print("held out by the rule but not yet in eval/holdout.txt (add them):\n  " + "\n  ".join(unlisted))


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".data" / "corpus")
    parser.add_argument("--work", type=Path, default=None, help="downloads and unpacked packages (default: a temp dir)")
    parser.add_argument("--budget-mib", type=float, default=30.0,
                        help="the corpus's size with its licence files; a GPU call carries 64 MiB with the repo")
    parser.add_argument("--kbps", type=float, default=64.0, help="Opus bitrate (nominal; VBR)")
    parser.add_argument("--excerpt-seconds", type=float, default=60.0, help="longest training excerpt per track")
    parser.add_argument("--holdout-seconds", type=float, default=30.0, help="held-out excerpt per track")
    parser.add_argument("--holdout-list", type=Path, default=HOLDOUT_LIST)
    parser.add_argument("--train-licence", action="append", default=None, metavar="NAME",
                        help="train only on tracks under these licences (as the manifest names them; repeatable; "
                             f"default: {' '.join(TRAINING_LICENCES)}, for {MODEL_LICENCE} weights)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists: pass --overwrite to replace it")
    settings = Settings(round(args.budget_mib * 2**20), args.kbps, args.excerpt_seconds, args.holdout_seconds)
    work = args.work or Path(tempfile.mkdtemp(prefix="musicguide-corpus-"))
    packages = []
    for name in PACKAGES:
        package = unpack(name, fetch(name, work), work)
        find_tracks(package)
        print(f"{name} {package.version}: {len(package.tracks)} usable tracks, {len(package.skipped)} skipped",
              flush=True)
        packages.append(package)
    licences = set(args.train_licence or TRAINING_LICENCES)
    found = {t.licence for p in packages for t in p.tracks}
    if args.train_licence and not licences <= found:
        raise SystemExit(f"--train-licence {', '.join(sorted(licences - found))}: no track has it "
                         f"(the packages' licences: {', '.join(sorted(found))})")
    excerpts, unlisted = plan(packages, set(read_holdout_list(args.holdout_list)), settings, licences)
    partial = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    data = write_corpus(packages, excerpts, settings, partial, args.jobs, licences)
    shutil.rmtree(args.out, ignore_errors=True)
    partial.rename(args.out)
    if args.work is None:
        shutil.rmtree(work)
    report(data, unlisted, settings.budget_bytes)
    if data["audio_bytes"] + data["licence_bytes"] > settings.budget_bytes:
        print("over budget: rerun with a smaller --budget-mib", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
