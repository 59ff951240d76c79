//! Ordinary tools on a real Cairn mount (dev launcher: 3 coordinators, 3 chunkservers,
//! 3 metaservers, `cairn mount` at DIR/mnt): cp -r of this repository's source tree in and out
//! (byte-identical by sha256sum), ls -l/stat output, sparse files (st_blocks, du, cp --sparse),
//! mv/ln/ln -s/chmod/chown/touch -d, tar create and extract, git init + commit (+ gc, fsck,
//! clone), and sqlite3 databases (rollback journal and WAL, which maps its -shm file shared and
//! writable).
//!
//! Where output is compared, the same script runs on the local disk and on the mount, and the
//! outputs must be equal: the local filesystem is the reference for what POSIX tools print.
//! Every check runs even if an earlier one fails; the test lists all failures.

use std::path::Path;

use anyhow::{bail, Context as _};
use cairn_tests::{run_checks, sh, Check, FuseCluster};

/// The repository's own source directories, copied in and out.
const SOURCE_DIRS: &[&str] =
    &["coordinator", "metaserver", "chunkserver", "fs-client", "proto", "tests", "docs", "scripts"];

/// sha256 of every regular file under `dir`, by relative path, sorted; plus the directory list.
const TREE_DIGEST: &str = r#"digest() { (cd "$1" && find . -type d | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }"#;

/// Runs `script` in `local` and in `mounted` (fresh directories of the same name) and requires
/// the same output.
fn same_output(local: &Path, mounted: &Path, script: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(local).with_context(|| format!("mkdir {}", local.display()))?;
    std::fs::create_dir_all(mounted).with_context(|| format!("mkdir {}", mounted.display()))?;
    let expected = sh(local, script).context("on the local disk")?.stdout;
    let got = sh(mounted, script).context("on the mount")?.stdout;
    if expected != got {
        bail!("output differs from the local disk's:\n--- local ---\n{expected}\n--- mount ---\n{got}");
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_work_on_the_mount() -> anyhow::Result<()> {
    let cluster = FuseCluster::start("fuse-tools").await?;
    let mnt = cluster.mnt();
    let local = cluster.scratch("local")?;
    eprintln!("cluster in {}, mounted at {}", cluster.dir().display(), mnt.display());

    // A frozen copy of the source tree: others may be editing the checkout while this runs.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("repository root")?.to_path_buf();
    let dirs = SOURCE_DIRS.iter().map(|d| format!("'{}/{d}'", repo.display())).collect::<Vec<_>>().join(" ");
    sh(&local, &format!("mkdir -p src && cp -r {dirs} src/ && find src -type f | wc -l"))?;
    let src = local.join("src");

    let checks: Vec<Check<'_>> = vec![
        (
            "cp -r in and out, byte-identical",
            Box::new(|| {
                let out = sh(
                    &local,
                    &format!(
                        "{TREE_DIGEST}\n\
                         cp -r '{src}' '{mnt}/tree'\n\
                         digest '{src}' > src.sum\n\
                         digest '{mnt}/tree' > in.sum\n\
                         diff src.sum in.sum\n\
                         rm -rf out && cp -r '{mnt}/tree' out\n\
                         digest out > out.sum\n\
                         diff src.sum out.sum\n\
                         wc -l < src.sum",
                        src = src.display(),
                        mnt = mnt.display()
                    ),
                )?;
                let lines: usize = out.stdout.trim().parse().context("count digest lines")?;
                if lines < 100 {
                    bail!("only {lines} digest lines: the source tree was not copied");
                }
                Ok(())
            }),
        ),
        (
            "ls -l and stat output",
            Box::new(|| {
                same_output(
                    &local.join("stat"),
                    &mnt.join("stat"),
                    "export TZ=UTC LC_ALL=C\n\
                     printf 'hello\\n' > f; chmod 640 f\n\
                     touch -d '2001-02-03 04:05:06.123456789' f\n\
                     mkdir -p d/a d/b; chmod 755 d; touch -d '2002-01-01 00:00:00' d\n\
                     head -c 1048577 /dev/zero > big; touch -d '2003-01-01 12:00:00.5' big\n\
                     ln -s f link; touch -h -d '2004-01-01 00:00:00' link\n\
                     stat -c '%n %A %s %h %u %g %y %F' f big link\n\
                     stat -c '%n %A %h %u %g %y %F' d; stat -c '%n %h %F' d/a\n\
                     ls -l --time-style=full-iso f big link\n\
                     stat -c '%b %B' big | awk '{ if ($1 * $2 < 1048577) print \"too few blocks: \" $0; else print \"blocks ok\" }'\n\
                     before=$(stat -c %Y f); sleep 1.1; echo more >> f; after=$(stat -c %Y f)\n\
                     [ \"$after\" -gt \"$before\" ] && echo mtime advances on write\n\
                     c0=$(stat -c %Z f); sleep 1.1; chmod 600 f; c1=$(stat -c %Z f)\n\
                     [ \"$c1\" -gt \"$c0\" ] && echo ctime advances on chmod\n\
                     stat -c '%n %A %s' f",
                )?;
                Ok(())
            }),
        ),
        (
            "a directory listed to its end, then rewound, shows entries added since",
            Box::new(|| {
                // The mount answers the READDIR after a listing's end itself; a rewind must
                // still reach the metaserver (POSIX: rewinddir shows the current state).
                let out = same_output(
                    &local.join("rewind"),
                    &mnt.join("rewind"),
                    r#"mkdir d && touch d/a d/b
                       perl -e 'opendir(my $d, "d") or die "opendir: $!";
                                my @first = grep { !/^\.\.?$/ } readdir($d);
                                open(my $f, ">", "d/c") or die "create: $!"; close $f;
                                my @rest = readdir($d); rewinddir($d);
                                my @again = sort grep { !/^\.\.?$/ } readdir($d);
                                print scalar(@first), " @again\n"'"#,
                )?;
                if out.trim() != "2 a b c" {
                    bail!("unexpected listing: {out}");
                }
                Ok(())
            }),
        ),
        (
            "sparse files: st_blocks, du, cp --sparse",
            Box::new(|| {
                // A chunk (64 MiB in a dev cluster) is the unit of allocation: a hole the size
                // of whole chunks takes no blocks; a chunk a write reached counts up to the end.
                let out = sh(
                    &mnt,
                    "mkdir sparse && cd sparse\n\
                     truncate -s 256M hole; stat -c 'hole %s %b' hole; du -k hole\n\
                     cp --sparse=always hole copy; stat -c 'copy %s %b' copy; cmp hole copy && echo copy same\n\
                     printf data | dd of=hole bs=1 seek=100000000 conv=notrunc status=none\n\
                     stat -c 'written %s %b' hole\n\
                     cp hole copy2; stat -c 'copy2 %s %b' copy2; cmp hole copy2 && echo copy2 same\n\
                     head -c 5000 /dev/urandom > small; stat -c 'small %s %b' small",
                )?;
                let expected = "hole 268435456 0\n0\thole\ncopy 268435456 0\ncopy same\n\
                                written 268435456 131072\ncopy2 268435456 131072\ncopy2 same\nsmall 5000 10\n";
                if out.stdout != expected {
                    bail!("printed:\n{}\nexpected:\n{expected}", out.stdout);
                }
                Ok(())
            }),
        ),
        (
            "mv, ln, ln -s, chmod, chown, touch -d",
            Box::new(|| {
                same_output(
                    &local.join("names"),
                    &mnt.join("names"),
                    "export TZ=UTC LC_ALL=C\n\
                     mkdir a; echo one > a/f; mv a/f a/g; ln a/g a/h; ln -s g a/s\n\
                     chmod 604 a/g; chown 1:1 a/h; chmod u+s,g+s a/g 2>/dev/null || true\n\
                     touch -d '2010-05-06 07:08:09' a/s; touch -h -d '2011-01-01 00:00:00' a/s\n\
                     mkdir a/sub; echo two > a/sub/x; touch -d '2012-02-03 04:05:06.7' a/sub/x; mv a b; mv b/sub/x b/y; rmdir b/sub\n\
                     readlink b/s; cat b/s b/y\n\
                     stat -c '%n %A %s %h %u %g %y' b/g b/h b/s b/y\n\
                     ls -l --time-style=full-iso b | sed 's/^total .*//'\n\
                     mv -f b/y b/g; cat b/g; stat -c '%n %h' b/g b/h\n\
                     rm b/h; stat -c '%n %h %A' b/g; ls b\n\
                     mkdir c; mv b c/; ls -R c\n\
                     ln -s /nonexistent dangling; ls -l dangling | awk '{print $1, $NF}'; [ ! -e dangling ] && echo dangling\n\
                     echo x > 'name with spaces and ünïcødé'; ls; rm 'name with spaces and ünïcødé'\n\
                     touch -d '@1234567890.987654321' t; stat -c '%Y %y' t",
                )?;
                Ok(())
            }),
        ),
        (
            "tar create and extract",
            Box::new(|| {
                sh(
                    &local,
                    &format!(
                        "{TREE_DIGEST}\n\
                         listing() {{ (cd \"$1\" && find . \\( -type d -printf '%p %M %TY-%Tm-%Td %TH:%TM:%TS\\n' \\) -o -printf '%p %M %s %TY-%Tm-%Td %TH:%TM:%TS\\n' | LC_ALL=C sort); }}\n\
                         mkdir -p '{mnt}/tar'\n\
                         tar -C '{src}' -cf '{mnt}/tar/src.tar' .\n\
                         tar -C '{src}' -cf local.tar .\n\
                         diff <(tar -tvf local.tar | LC_ALL=C sort) <(tar -tvf '{mnt}/tar/src.tar' | LC_ALL=C sort)\n\
                         rm -rf x1 && mkdir x1 && tar -C x1 -xf '{mnt}/tar/src.tar'\n\
                         mkdir '{mnt}/tar/x2' && tar -C '{mnt}/tar/x2' -xf local.tar\n\
                         rm -rf x3 && mkdir x3 && tar -C x3 -xf local.tar\n\
                         diff <(digest '{src}') <(digest x1)\n\
                         diff <(digest '{src}') <(digest '{mnt}/tar/x2')\n\
                         diff <(listing x3) <(listing '{mnt}/tar/x2')\n\
                         tar -C '{mnt}/tar' -czf '{mnt}/tar/x2.tgz' x2 && tar -tzf '{mnt}/tar/x2.tgz' | wc -l",
                        src = src.display(),
                        mnt = mnt.display()
                    ),
                )?;
                Ok(())
            }),
        ),
        (
            "git init, add, commit, gc, fsck, clone",
            Box::new(|| {
                let out = sh(
                    &mnt,
                    &format!(
                        "export GIT_CONFIG_NOSYSTEM=1 HOME='{home}'\n\
                         git config --global user.name cairn; git config --global user.email cairn@test\n\
                         git config --global init.defaultBranch main\n\
                         mkdir repo && cd repo && git init -q\n\
                         cp -r '{src}/proto' '{src}/docs' .\n\
                         git add . && git commit -qm first\n\
                         echo change >> docs/operations.md && git commit -qam second\n\
                         git mv docs documentation && git commit -qm rename\n\
                         git gc -q && git fsck --full --strict 2>&1\n\
                         git status --porcelain\n\
                         git log --format=%s | tr '\\n' ' '; echo\n\
                         rm -rf '{local}/clone' && git clone -q . '{local}/clone'\n\
                         diff -r --exclude=.git . '{local}/clone' && echo clone identical",
                        home = local.display(),
                        src = src.display(),
                        local = local.display()
                    ),
                )?;
                let text = out.stdout;
                if !text.contains("rename second first") || !text.contains("clone identical") {
                    bail!("unexpected git output:\n{text}");
                }
                Ok(())
            }),
        ),
        (
            "sqlite3 databases (rollback journal and WAL)",
            Box::new(|| {
                let out = sh(
                    &mnt,
                    "mkdir -p db && cd db\n\
                     for mode in delete wal; do\n\
                       sqlite3 $mode.sqlite \"pragma journal_mode=$mode; create table t(a integer primary key, b text);\" >/dev/null\n\
                       sqlite3 $mode.sqlite \"begin; with recursive n(i) as (select 1 union all select i+1 from n where i < 20000) insert into t select i, hex(randomblob(64)) from n; commit;\"\n\
                       sqlite3 $mode.sqlite \"update t set b = 'x' where a % 3 = 0; delete from t where a % 7 = 0; create index tb on t(b);\"\n\
                       sqlite3 $mode.sqlite \"select '$mode', count(*), sum(a), sum(b = 'x') from t; pragma integrity_check;\"\n\
                     done\n\
                     sqlite3 wal.sqlite 'pragma wal_checkpoint(truncate);' >/dev/null\n\
                     cp delete.sqlite copy.sqlite && sqlite3 copy.sqlite 'select count(*) from t; pragma integrity_check;'",
                )?;
                // 20000 rows minus multiples of 7 (2857); sum of the rest; multiples of 3 not of 7.
                let kept: u64 = (1..=20000u64).filter(|i| i % 7 != 0).count() as u64;
                let sum: u64 = (1..=20000u64).filter(|i| i % 7 != 0).sum();
                let x: u64 = (1..=20000u64).filter(|i| i % 7 != 0 && i % 3 == 0).count() as u64;
                let expected = format!("delete|{kept}|{sum}|{x}\nok\nwal|{kept}|{sum}|{x}\nok\n{kept}\nok\n");
                if out.stdout != expected {
                    bail!("sqlite3 printed:\n{}\nexpected:\n{expected}", out.stdout);
                }
                Ok(())
            }),
        ),
    ];
    // The checks block on child processes.
    tokio::task::block_in_place(|| run_checks(checks))?;

    // What tar does to each file it extracts: write, then set mtime and mode on the open file.
    // The attribute changes ride on the commit of the buffered data (one Raft write), and
    // land as asked.
    let combined = "cairn_metaserver_ops_total{op=\"commit_write_setattr\",outcome=\"ok\"}";
    let before = cluster.metaserver_metric_sum(combined).await?;
    let out = tokio::task::block_in_place(|| {
        sh(
            &mnt,
            "python3 -c \"\n\
             import os\n\
             fd = os.open('attrs-on-open', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n\
             os.write(fd, b'x' * 100000)\n\
             os.utime(fd, ns=(1234567890123456789, 1111111111222222222))\n\
             os.fchmod(fd, 0o751)\n\
             os.close(fd)\n\
             \"\n\
             stat -c '%s %a %Y' attrs-on-open",
        )
    })?;
    if out.stdout.trim() != "100000 751 1111111111" {
        bail!("after write, futimens and fchmod on the open file: {}", out.stdout);
    }
    let after = cluster.metaserver_metric_sum(combined).await?;
    if after < before + 1.0 {
        bail!("no commit carried the attribute change ({before} -> {after} commit_write_setattr)");
    }
    // A change the caller may not make (explicit times on someone else's file) fails alone:
    // the written data is committed all the same, and the caller gets EPERM. (The kernel's
    // default_permissions check refuses it first here; the metaserver refuses it too when the
    // kernel's attributes are stale, and then the client commits the data alone.)
    let out = tokio::task::block_in_place(|| {
        sh(
            &mnt,
            "touch not-mine && chmod 666 not-mine
             python3 -c \"\n\
             import os\n\
             os.setgid(65534); os.setuid(65534)\n\
             fd = os.open('not-mine', os.O_WRONLY)\n\
             os.write(fd, b'written by nobody')\n\
             try:\n\
             \x20   os.utime(fd, ns=(1, 1))\n\
             \x20   print('utime allowed')\n\
             except PermissionError:\n\
             \x20   print('EPERM')\n\
             os.close(fd)\n\
             \"\n\
             cat not-mine; echo; stat -c '%s %Y' not-mine",
        )
    })?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    let mtime_advanced = lines.get(2).and_then(|l| l.split(' ').nth(1)).is_some_and(|t| t != "1");
    if lines.first() != Some(&"EPERM") || lines.get(1) != Some(&"written by nobody") || !mtime_advanced {
        bail!("futimens refused on an open file with buffered writes: {}", out.stdout);
    }
    // A write by a caller without CAP_FSETID drops setuid, and setgid when the group may execute
    // or the writer is not in the file's group (Linux 6.x, as on ext4): seen through the open
    // handle before the data is committed, and after close. Root's write keeps them.
    let out = tokio::task::block_in_place(|| {
        sh(
            &mnt,
            "touch s g r && chmod 6777 s r && chmod 2767 g
             python3 -c \"\n\
             import os\n\
             os.setgid(65534); os.setuid(65534)\n\
             for n in ('s', 'g'):\n\
             \x20   fd = os.open(n, os.O_WRONLY)\n\
             \x20   os.write(fd, b'x')\n\
             \x20   print(n, oct(os.fstat(fd).st_mode & 0o7777))\n\
             \x20   os.close(fd)\n\
             \"\n\
             echo y >> r
             stat -c '%n %a' s g r",
        )
    })?;
    let expected = "s 0o777\ng 0o767\ns 777\ng 767\nr 6777";
    if out.stdout.trim() != expected {
        bail!("setuid/setgid after writes:\n{}\nexpected:\n{expected}", out.stdout);
    }
    cluster.finish(&[])
}
