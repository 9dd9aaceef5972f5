-- advlab's results database (see advlab.evaluation.store); schema version 1
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, env TEXT NOT NULL,
    started REAL NOT NULL, finished REAL, wall_s REAL);
CREATE TABLE IF NOT EXISTS run_cells (
    run TEXT NOT NULL, position INTEGER NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (run, position));
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, spec TEXT NOT NULL, model TEXT NOT NULL, defense TEXT NOT NULL,
    attack TEXT NOT NULL, eps REAL, seed INTEGER NOT NULL, n INTEGER NOT NULL,
    started REAL NOT NULL, finished REAL NOT NULL, wall_s REAL NOT NULL, device TEXT NOT NULL,
    info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS examples (
    key TEXT NOT NULL, idx INTEGER NOT NULL, label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL, clean_conf REAL NOT NULL,
    adv_pred INTEGER NOT NULL, adv_conf REAL NOT NULL, target INTEGER,
    success INTEGER NOT NULL, l0 REAL NOT NULL, l1 REAL NOT NULL, l2 REAL NOT NULL,
    linf REAL NOT NULL, ssim REAL, queries INTEGER,
    PRIMARY KEY (key, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probes (
    key TEXT NOT NULL, probe TEXT NOT NULL, idx INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL, clean_conf REAL NOT NULL,
    adv_pred INTEGER NOT NULL, adv_conf REAL NOT NULL,
    PRIMARY KEY (key, probe, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    key TEXT NOT NULL, detector TEXT NOT NULL, idx INTEGER NOT NULL,
    clean REAL NOT NULL, adv REAL NOT NULL,
    PRIMARY KEY (key, detector, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sanity (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, defense TEXT NOT NULL,
    findings TEXT NOT NULL, finished REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    key TEXT NOT NULL, start INTEGER NOT NULL, n INTEGER NOT NULL, started REAL NOT NULL,
    finished REAL NOT NULL, wall_s REAL NOT NULL, device TEXT NOT NULL,
    PRIMARY KEY (key, start));
CREATE TABLE IF NOT EXISTS gallery (
    key TEXT NOT NULL, idx INTEGER NOT NULL, shape TEXT NOT NULL,
    x BLOB NOT NULL, x_adv BLOB NOT NULL, PRIMARY KEY (key, idx));
