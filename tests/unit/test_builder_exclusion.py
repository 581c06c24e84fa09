"""VCS metadata and the token file are excluded by what a path resolves to, not by its name.

Issue 11, item 12: ``--artifact .git``, ``--artifact .git/config`` and a
symlink in ``_salt/`` pointing at ``.git`` all bundled ``.git/config``, which
often holds a CI token in the remote URL.
"""

from __future__ import annotations

import os

import pytest

from spirodeploy.builder import VCS_DIRS, TarballBuilder, build_bundle, fs_scanner
from spirodeploy.cli import main
from spirodeploy.errors import BundleError

SECRET = b"ci-token-SECRET-4242"


def write(path, data=b"x"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def project(tmp_path):
    """A project with a .git whose config holds a token, and a token file."""
    root = tmp_path / "proj"
    write(root / "_salt" / "top.sls", b"base: {'*': [web]}\n")
    write(root / "_salt" / "web.sls", b"web: test.nop\n")
    write(root / ".git" / "config",
          b'[remote "origin"]\n\turl = https://ci:' + SECRET + b"@git.example.com/p.git\n")
    write(root / ".git" / "HEAD", b"ref: refs/heads/main\n")
    write(root / ".token", SECRET)
    write(root / "src" / "app.py", b"print('hi')\n")
    return root


def bundle_bytes(bundle) -> bytes:
    bundle.file.seek(0)
    data = bundle.file.read()
    bundle.close()
    return data


def names_of(bundle) -> set:
    return {f["path"] for f in bundle.manifest["files"]}


# --------------------------------------------------------------------------
# explicit paths: a clear one-line error

@pytest.mark.parametrize("artifact", [".git", ".git/config", "./.git/config", ".git/../.git/HEAD",
                                      "cfg-link", "git-link", "git-link/config"])
def test_artifact_resolving_into_vcs_metadata_is_refused(project, artifact):
    os.symlink(".git/config", project / "cfg-link")
    os.symlink(".git", project / "git-link")
    with pytest.raises(BundleError) as e:
        build_bundle(project, artifacts=[artifact], gitcommit=False)
    msg = str(e.value)
    assert artifact in msg and "version-control metadata" in msg and "\n" not in msg


def test_absolute_artifact_into_vcs_metadata_is_refused(project):
    with pytest.raises(BundleError, match="version-control metadata"):
        build_bundle(project, artifacts=[str(project / ".git" / "config")], gitcommit=False)


def test_cli_artifact_git_config_is_exit_2_one_line(project, capsys):
    code = main(["--dry-run", "--no-progress", "-C", str(project),
                 "--artifact", ".git/config", "myproj", "prod"])
    out, err = capsys.readouterr()
    assert code == 2
    assert ".git/config" in err and "version-control metadata" in err
    assert len(err.strip().splitlines()) == 1
    assert SECRET.decode() not in out + err


def test_salt_dir_that_is_a_symlink_to_git_is_refused(tmp_path):
    root = tmp_path / "proj"
    write(root / ".git" / "config", SECRET)
    os.symlink(".git", root / "_salt")
    with pytest.raises(BundleError, match="salt directory .*version-control metadata"):
        build_bundle(root, gitcommit=False)


def test_artifact_name_naming_vcs_metadata_is_refused(project):
    # the seed API names the member separately from the path
    with pytest.raises(BundleError, match="version-control metadata"):
        with TarballBuilder(root=str(project)) as b:
            b.add_artifact(str(project / "src" / "app.py"), ".git/config")


# --------------------------------------------------------------------------
# symlinks met while walking: skipped, like the directory itself

def test_symlinks_in_salt_into_git_are_not_bundled(project):
    os.symlink("../.git", project / "_salt" / "gitlink")
    os.symlink("../.git/config", project / "_salt" / "cfg")
    os.makedirs(project / "_salt" / "deep")
    os.symlink("../../.git/", project / "_salt" / "deep" / "again")
    bundle = build_bundle(project, gitcommit=False)
    assert names_of(bundle) == {"top.sls", "web.sls"}
    assert SECRET not in bundle_bytes(bundle)


def test_symlink_into_a_directory_inside_git_is_not_bundled(project):
    write(project / ".git" / "hooks" / "pre-push", SECRET)
    os.symlink("../.git/hooks", project / "_salt" / "hooks")
    bundle = build_bundle(project, gitcommit=False)
    assert not [n for n in names_of(bundle) if n.startswith("hooks")]
    assert SECRET not in bundle_bytes(bundle)


@pytest.mark.parametrize("vcs", sorted(VCS_DIRS))
def test_artifact_directory_and_fs_source_symlinks_into_vcs(project, vcs):
    write(project / vcs / "secret", SECRET)
    write(project / "build" / "app.whl", b"wheel")
    os.symlink("../" + vcs, project / "build" / "meta")
    os.symlink(f"../{vcs}/secret", project / "build" / "secret-file")
    bundle = build_bundle(project, artifacts=["build"], include_source="fs", gitcommit=False,
                          exclude=[str(project / ".token")])
    names = names_of(bundle)
    assert "_artifacts/build/app.whl" in names and "_source/src/app.py" in names
    assert not [n for n in names if "meta" in n or "secret" in n], names
    assert SECRET not in bundle_bytes(bundle)


def test_new_vcs_names_are_pruned_by_name(project):
    for vcs in ("_darcs", "CVS", ".pijul"):
        write(project / "_salt" / vcs / "secret", SECRET)
    bundle = build_bundle(project, gitcommit=False)
    assert names_of(bundle) == {"top.sls", "web.sls"}


def test_seed_api_without_root_skips_symlink_to_vcs_inside_the_salt_dir(tmp_path, monkeypatch):
    salt = tmp_path / "_salt"
    write(salt / "top.sls", b"t")
    write(salt / ".hg" / "hgrc", SECRET)
    os.symlink(".hg", salt / "meta")
    os.symlink(".hg/hgrc", salt / "rc")
    monkeypatch.chdir(tmp_path)
    with TarballBuilder() as b:
        b.add_saltdir("_salt")
        b.add_source(fs_scanner)
    names = {f["path"] for f in b.manifest["files"]}
    assert names == {"top.sls"}
    b.buffer.seek(0)
    assert SECRET not in b.buffer.read()


def test_symlink_to_a_worktree_git_file_is_not_bundled(project):
    # in a worktree or submodule, .git is a file pointing at the metadata
    write(project / "sub" / ".git", b"gitdir: " + SECRET)
    os.symlink("../sub/.git", project / "_salt" / "gitfile")
    bundle = build_bundle(project, gitcommit=False)
    assert names_of(bundle) == {"top.sls", "web.sls"}


def test_ordinary_symlinks_still_work(project):
    os.symlink("web.sls", project / "_salt" / "alias.sls")
    os.symlink("../src", project / "_salt" / "src")
    bundle = build_bundle(project, gitcommit=False)
    assert names_of(bundle) == {"top.sls", "web.sls", "alias.sls", "src/app.py"}
    bundle.close()


# --------------------------------------------------------------------------
# the token file: matched by identity, whatever the spelling

def test_token_symlinked_into_salt_is_not_bundled(project):
    os.symlink("../.token", project / "_salt" / "token.sls")
    bundle = build_bundle(project, gitcommit=False, exclude=[str(project / ".token")])
    assert "token.sls" not in names_of(bundle)
    assert SECRET not in bundle_bytes(bundle)


def test_token_given_relative_to_cwd_while_walk_uses_another_path(project, monkeypatch):
    # the walk sees <root>/.token; the exclusion was given as a relative
    # path through a symlinked directory
    os.symlink(str(project), project.parent / "alias")
    monkeypatch.chdir(project.parent)
    os.symlink("../.token", project / "_salt" / "t")
    bundle = build_bundle(str(project), include_source="fs", gitcommit=False,
                          exclude=["alias/.token"])
    names = names_of(bundle)
    assert "_source/.token" not in names and "t" not in names
    assert SECRET not in bundle_bytes(bundle)


def test_token_file_named_as_artifact_is_refused(project):
    os.symlink(".token", project / "token-link")
    for artifact in (".token", "token-link"):
        with pytest.raises(BundleError, match="never bundled") as e:
            build_bundle(project, artifacts=[artifact], gitcommit=False,
                         exclude=[str(project / ".token")])
        assert "\n" not in str(e.value)
