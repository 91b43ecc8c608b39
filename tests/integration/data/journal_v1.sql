-- A journal as resolute wrote it at schema version 1 (its DDL exactly, from SQLAlchemy's
-- create_all), with two experiments, three trials and two checkpoints.
CREATE TABLE resolute_meta (
	"key" VARCHAR(64) NOT NULL,
	value VARCHAR(255) NOT NULL,
	PRIMARY KEY ("key")
);
CREATE TABLE experiments (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
	name VARCHAR(255) NOT NULL,
	config_yaml TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	searcher_snapshot JSON,
	seed BIGINT NOT NULL,
	storage_root TEXT NOT NULL,
	mlflow_run_id VARCHAR(64),
	best_trial_id INTEGER,
	best_metric FLOAT,
	progress FLOAT NOT NULL,
	created_at FLOAT NOT NULL,
	ended_at FLOAT
);
CREATE TABLE trials (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
	experiment_id INTEGER NOT NULL,
	searcher_trial_id INTEGER NOT NULL,
	hparams JSON NOT NULL,
	seed BIGINT NOT NULL,
	clone_from INTEGER,
	status VARCHAR(16) NOT NULL,
	restarts INTEGER NOT NULL,
	latest_checkpoint TEXT,
	latest_checkpoint_step BIGINT,
	best_metric FLOAT,
	best_step BIGINT,
	last_step BIGINT,
	mlflow_run_id VARCHAR(64),
	error TEXT,
	created_at FLOAT NOT NULL,
	started_at FLOAT,
	ended_at FLOAT,
	CONSTRAINT uq_trial_searcher_id UNIQUE (experiment_id, searcher_trial_id),
	FOREIGN KEY(experiment_id) REFERENCES experiments (id),
	FOREIGN KEY(clone_from) REFERENCES trials (id)
);
CREATE TABLE checkpoints (
	id INTEGER NOT NULL,
	trial_id INTEGER NOT NULL,
	uri TEXT NOT NULL,
	step BIGINT NOT NULL,
	metric FLOAT,
	created_at FLOAT NOT NULL,
	deleted BOOLEAN NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(trial_id) REFERENCES trials (id),
	UNIQUE (uri)
);
CREATE INDEX ix_checkpoints_trial_id ON checkpoints (trial_id);

INSERT INTO resolute_meta VALUES ('schema_version', '1');
INSERT INTO experiments VALUES (1, 'mnist-asha',
  'name: mnist-asha
entrypoint: train:train
hyperparameters:
  lr: {type: log, minval: -4, maxval: -1}
resources:
  slots_per_trial: 2
  priority: 7
  max_slots: 6
searcher:
  name: asha
  metric: loss
  max_trials: 8
  max_time: 9
',
  'COMPLETED', '{"kind": "asha", "next_id": 3}', 42, '/data/runs', 'run-a', 2, 0.125, 1.0,
  1700000000.0, 1700000500.0);
INSERT INTO experiments VALUES (2, 'cifar-random',
  'name: cifar-random
entrypoint: train:train
hyperparameters:
  lr: {type: log, minval: -4, maxval: -1}
searcher:
  name: random
  metric: acc
  smaller_is_better: false
  max_trials: 4
  max_time: 10
',
  'PAUSED', NULL, 9, '/data/runs', NULL, NULL, NULL, 0.25, 1700001000.0, NULL);
INSERT INTO trials VALUES (1, 1, 1, '{"lr": 0.1}', 11, NULL, 'STOPPED', 0, NULL, NULL,
  0.5, 1, 1, 'trial-run-1', NULL, 1700000001.0, 1700000002.0, 1700000010.0);
INSERT INTO trials VALUES (2, 1, 2, '{"lr": 0.01}', 12, NULL, 'COMPLETED', 1,
  '/data/runs/1/2/ckpt-9', 9, 0.125, 9, 9, 'trial-run-2', 'lost a node', 1700000003.0,
  1700000004.0, 1700000400.0);
INSERT INTO trials VALUES (3, 2, 1, '{"lr": 0.3}', 13, 2, 'PAUSED', 0, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, 1700001001.0, NULL, NULL);
INSERT INTO checkpoints VALUES (1, 2, '/data/runs/1/2/ckpt-3', 3, 0.25, 1700000100.0, 1);
INSERT INTO checkpoints VALUES (2, 2, '/data/runs/1/2/ckpt-9', 9, 0.125, 1700000390.0, 0);
-- A deleted experiment row left a gap in the ids: AUTOINCREMENT must not reuse it.
UPDATE sqlite_sequence SET seq = 5 WHERE name = 'experiments';
