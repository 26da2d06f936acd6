"""scripts/build_corpus.py: licences from copyright files, names, the held-out split, the budget, Opus.

No download here: the Debian packages are stood in for by small files; the real run's numbers are
in docs/training.md.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
try:
    import build_corpus as bc
finally:
    sys.path.remove(str(REPO / "scripts"))

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: game

Files: *
Copyright: 2002 Someone
License: GPL-2+

Files: base/music/Crystan-*.ogg
 base/music/dbsea.ogg
Copyright: Crystan
License: CC-BY-SA-3.0

Files: base/music/dbsea.ogg
Copyright: Another
License: GPL-2
 The text of the licence,
 on several lines.
"""


def test_dep5_the_last_matching_paragraph_names_the_licence():
    copyright = bc.Copyright(DEP5, True, bc.dep5_paragraphs(DEP5))
    assert copyright.licence_of("usr/share/games/x/base/music/Crystan-Battle01.ogg") == "CC-BY-SA-3.0"
    assert copyright.licence_of("usr/share/games/x/base/music/dbsea.ogg") == "GPL-2"  # the later paragraph wins
    assert copyright.licence_of("usr/share/games/x/base/music/other.ogg") == "GPL-2+"
    assert bc.licence_path("usr/x/base/0music.pk3:music/dbsea.ogg") == "usr/x/base/music/dbsea.ogg"


@pytest.mark.parametrize("text, licence", [
    ("as published by the Free Software Foundation; either version 2\nof the License, or (at your option) any "
     "later version.", None),  # no licence named
    ("under the terms of the GNU General Public License\nas published by the Free Software Foundation; either "
     "version 2\nof the License, or (at your option) any later version.", "GPL-2+"),
    ("it under the terms of the GNU General Public License version 2\n        or at your option any later version.",
     "GPL-2+"),
    ("the GNU General Public License as published by\nthe Free Software Foundation; version 2 dated June, 1991.",
     "GPL-2"),
    ("CREATIVE COMMONS PUBLIC LICENSE ... e. \"License Elements\" means the following high-level license\n"
     "attributes as selected by Licensor and indicated in the title of\n this License: Attribution, ShareAlike.",
     "CC-BY-SA-3.0"),
    ("Music by someone, all rights reserved.", None),
])
def test_free_form_copyright_notices(text, licence):
    assert bc.text_licence(text) == licence


def test_the_package_s_own_notice_comes_first():
    text = ("GNU General Public License version 2 dated June, 1991 ... fonts: GNU General Public License "
            "version 2 or (at your option) any later version")
    assert bc.text_licence(text) == "GPL-2"


def test_names_and_families():
    assert bc.corpus_name("wesnoth-1.16-music", "battle-epic") == "battle-epic"  # the names holdout.txt uses
    assert bc.corpus_name("singularity-music", "Through Space") == "singularity-through_space"
    assert bc.corpus_name("planetblupi-music-ogg", "music008") == "planetblupi-music008"
    assert bc.corpus_name("xblast-tnt-musics", "xbsng5") == "xblast-tnt-xbsng5"
    assert bc.family("battle-epic") == bc.family("battle") == "battle"
    assert bc.family("warzone2100-track3_enhanced") == "warzone2100-track3" != bc.family("warzone2100-track30")
    assert bc.family("nexuiz-sixtyfour_") == bc.family("nexuiz-sixtyfour_revisited")


def test_fair_shares_give_what_a_small_package_cannot_use_to_the_others():
    assert bc.fair_shares({"a": 10.0, "b": 100.0, "c": 100.0}, 150.0) == {"a": 10.0, "b": 70.0, "c": 70.0}
    assert bc.fair_shares({"a": 10.0, "b": 20.0}, 100.0) == {"a": 10.0, "b": 20.0}


def track(package: str, name: str, seconds: float) -> bc.Track:
    return bc.Track(package, f"music/{name}.ogg", name, seconds, 44100, "GPL-2+")


def packages() -> list[bc.Package]:
    made = []
    for package, tracks in {
        "wesnoth-1.16-music": [("battle", 300), ("battle-epic", 200), ("knolls", 250), ("sad", 120), ("frantic", 90)],
        "asc-music": [("asc-a", 300), ("asc-b", 400)],
        "nexuiz-music": [(f"nexuiz-{i}", 100 + i) for i in range(12)] + [("nexuiz-short", 20)],
    }.items():
        made.append(bc.Package(package, "1", Path("/nowhere"), Path("/nowhere"),
                               [track(package, name, seconds) for name, seconds in tracks]))
    return made


def test_the_plan_holds_out_listed_and_chosen_tracks_and_fits_the_budget():
    settings = bc.Settings(budget_bytes=4 << 20, kbps=64.0, excerpt_seconds=60.0, holdout_seconds=30.0)
    excerpts, unlisted = bc.plan(packages(), {"battle", "knolls"}, settings)
    held = {e.track.name for e in excerpts if e.split == "holdout"}
    trained = {e.track.name for e in excerpts if e.split == "train"}
    assert {"battle", "knolls"} <= held and not held & trained
    assert "battle-epic" not in trained  # a variant of a held-out track
    assert set(unlisted) == held - {"battle", "knolls"} and len(unlisted) == 2  # one chosen per other package
    assert {e.track.package for e in excerpts if e.split == "train"} == {p.name for p in packages()}
    assert sum(e.seconds for e in excerpts) <= settings.seconds_budget + 1e-6
    assert all(e.seconds <= 60 for e in excerpts) and all(e.offset_s == 0 for e in excerpts if e.split == "train")
    middle = next(e for e in excerpts if e.track.name == "battle")
    assert (middle.offset_s, middle.seconds) == (135.0, 30.0)
    # The same packages give the same plan, whatever order their tracks come in.
    shuffled = packages()
    for package in shuffled:
        package.tracks.reverse()
    assert sorted(map(str, bc.plan(shuffled, {"battle", "knolls"}, settings)[0])) == sorted(map(str, excerpts))


def test_a_listed_name_that_no_package_has_is_refused():
    with pytest.raises(SystemExit, match="no package has"):
        bc.plan(packages(), {"battel"}, bc.Settings(4 << 20, 64.0, 60.0, 30.0))


def test_tracks_outside_the_training_licences_are_held_out_but_never_trained_on(tmp_path):
    root = tmp_path / "xblast-tnt-musics"
    (root / "usr/share/games/xblast-tnt/sounds").mkdir(parents=True)
    (root / "usr/share/doc/xblast-tnt-musics").mkdir(parents=True)
    for song in (5, 6, 7):
        (root / f"usr/share/games/xblast-tnt/sounds/xbsng{song}.raw").write_bytes(
            np.full(2 * 22050 * 40, 128, np.uint8).tobytes())
    (root / "usr/share/doc/xblast-tnt-musics/copyright").write_text(
        "the GNU General Public License as published by the Free Software Foundation; version 2 dated June, 1991.")
    xblast = bc.Package("xblast-tnt-musics", "1", root, root / "usr/share/doc/xblast-tnt-musics/copyright")
    bc.find_tracks(xblast)
    assert [(t.name, t.licence, t.seconds) for t in xblast.tracks][0] == ("xblast-tnt-xbsng5", "GPL-2", 40.0)
    settings = bc.Settings(4 << 20, 64.0, 60.0, 30.0)
    # GPL-2-only does not combine with GPL-3: by default its songs are held out, not trained on
    excerpts, _ = bc.plan([xblast, *packages()], {"xblast-tnt-xbsng5", "battle"}, settings)
    mine = [(e.track.name, e.split) for e in excerpts if e.track.package == "xblast-tnt-musics"]
    assert mine == [("xblast-tnt-xbsng5", "holdout")]
    assert "GPL-2" not in bc.TRAINING_LICENCES
    assert all(e.track.licence in bc.TRAINING_LICENCES for e in excerpts if e.split == "train")
    # a GPL-2-only model would train on them
    excerpts, _ = bc.plan([xblast, *packages()], {"xblast-tnt-xbsng5", "battle"}, settings, {"GPL-2", "GPL-2+"})
    assert {e.track.name for e in excerpts if e.split == "train" and e.track.package == "xblast-tnt-musics"} == \
        {"xblast-tnt-xbsng6", "xblast-tnt-xbsng7"}


def test_the_repository_holds_out_a_track_of_every_package():
    listed = bc.read_holdout_list(bc.HOLDOUT_LIST)
    for package in bc.PACKAGES:
        prefix = bc.NAME_PREFIXES.get(package, bc.short_name(package))
        if prefix:
            assert any(name.startswith(prefix + "-") for name in listed), package
    assert {"knolls", "battle", "elvish-theme", "loyalists", "traveling_minstrels", "underground"} <= set(listed)


def music(seconds: float, rate: int) -> np.ndarray:
    """Noisy chords: enough going on that a codec spends its bits."""
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * rate)) / rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220, 277, 330, 440, 880))
    noise = rng.standard_normal((len(t), 2)) * np.exp(-8 * (t % 0.25))[:, None]
    return (0.08 * chord[:, None] + 0.1 * noise).astype(np.float32)


def test_excerpts_are_written_as_48_khz_stereo_opus_at_the_asked_bitrate(tmp_path):
    root = tmp_path / "pkg"
    (root / "music").mkdir(parents=True)
    sf.write(root / "music" / "song.flac", music(20.0, 44100), 44100)
    song = bc.Track("some-music", "music/song.flac", "some-song", 20.0, 44100, "GPL-2+")
    out = tmp_path / "out.ogg"
    size = bc.write_excerpt(bc.Job(str(root), bc.Excerpt(song, "train", 5.0, 10.0), str(out), 64.0))
    info = sf.info(out)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("OGG", "OPUS", 48000, 2)
    assert info.duration == pytest.approx(10.0, abs=0.01)
    assert 60 <= size * 8 / 10.0 / 1000 <= 96  # kbit/s: the nominal 64, give or take the stream's overhead


def test_zip_members_and_headerless_songs_are_read(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    buffer = io.BytesIO()
    sf.write(buffer, music(1.0, 44100), 44100, format="OGG", subtype="VORBIS")
    with zipfile.ZipFile(root / "data.pk3", "w") as pk3:
        pk3.writestr("music/a.ogg", buffer.getvalue())
    with bc.open_sound(root, "data.pk3:music/a.ogg", "nexuiz-music") as sound:
        assert (sound.samplerate, sound.channels) == (44100, 2) and sound.frames > 40000
    # XBlast: unsigned 8-bit stereo at 22.05 kHz, no header
    (root / "xbsng1.raw").write_bytes(np.full(2 * 22050, 128, np.uint8).tobytes())
    with bc.open_sound(root, "xbsng1.raw", "xblast-tnt-musics") as sound:
        assert (sound.samplerate, sound.channels, sound.frames) == (22050, 2, 22050)
        assert np.abs(sound.read()).max() == 0  # 128 is silence


def test_the_bitrate_maps_onto_libsndfile_s_compression_level():
    assert bc.compression_level(64.0) == pytest.approx(0.896)
    assert bc.compression_level(512.0) == 0.0 and bc.compression_level(6.0) == 1.0
