"""The classic lab design cpflow is benchmarked against (issue 10): a Celery app on RabbitMQ, one task
per image set that GETs its files from S3, writes the same no-op tables cpflow's no-op engine writes,
PUTs them back with a provenance record and upserts the set's rows in MariaDB, and a chord whose
callback reduces every set's tables into summary.csv.

It runs on the same MinIO and MariaDB (the benchmark's database, the same schema and experiment rows
cpflow uses) so both sides do the same per-set I/O. Settings come from the environment:
  CPFLOW_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY / _REGION, CPFLOW_DB_HOST / _PORT / _USER /
  _PASSWORD / _NAME (as cpflow's), PEER_BROKER_URL (amqp://…), PEER_ACKS_LATE=1 for acks_late +
  reject_on_worker_lost (Celery's defaults otherwise), PEER_RUN_LOG (a file each analysed set's key
  is appended to, to count sets analysed twice).

  python cpflow_peer.py enqueue <experiment id>   # one task per pending set + the reducing chord
  celery -A cpflow_peer worker --pool threads -c 8  # a worker (the benchmark starts them)
"""
import csv
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import boto3
import pymysql
from botocore.config import Config
from celery import Celery, chord

ACKS_LATE = os.environ.get("PEER_ACKS_LATE") == "1"


def _db_url() -> str:
    user = quote(os.environ["CPFLOW_DB_USER"], safe="")
    password = quote(os.environ.get("CPFLOW_DB_PASSWORD", ""), safe="")
    host, port, name = os.environ["CPFLOW_DB_HOST"], os.environ["CPFLOW_DB_PORT"], os.environ["CPFLOW_DB_NAME"]
    return f"db+mysql+pymysql://{user}:{password}@{host}:{port}/{name}"


app = Celery("cpflow_peer", broker=os.environ.get("PEER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"), backend=_db_url())
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Celery's defaults unless asked: early acknowledgement, prefetch multiplier 4.
    task_acks_late=ACKS_LATE,
    task_reject_on_worker_lost=ACKS_LATE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# One log line per task received and succeeded would be the peer's biggest CPU cost; keep the rest.
for _name in ("celery.app.trace", "celery.worker.strategy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_local = threading.local()


def s3():
    client = getattr(_local, "s3", None)
    if client is None:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=os.environ.get("CPFLOW_S3_ENDPOINT"),
            aws_access_key_id=os.environ.get("CPFLOW_S3_ACCESS_KEY"),
            aws_secret_access_key=os.environ.get("CPFLOW_S3_SECRET_KEY"),
            region_name=os.environ.get("CPFLOW_S3_REGION", "us-east-1"),
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}, max_pool_connections=64),
        )
        _local.s3 = client
    return client


def db():
    conn = getattr(_local, "db", None)
    if conn is None or not conn.open:
        conn = pymysql.connect(
            host=os.environ["CPFLOW_DB_HOST"],
            port=int(os.environ["CPFLOW_DB_PORT"]),
            user=os.environ["CPFLOW_DB_USER"],
            password=os.environ.get("CPFLOW_DB_PASSWORD", ""),
            database=os.environ["CPFLOW_DB_NAME"],
            autocommit=False,
        )
        _local.db = conn
    conn.ping(reconnect=True)
    return conn


# --- the no-op "engine": the same tables cpflow's no-op engine writes (activities/engines/noop.ts) ---


def noop_count(key: str) -> int:
    h = 0
    for ch in key:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    return h % 5


def csv_cell(value) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in '",\n\r') else text


def csv_line(cells) -> str:
    return ",".join(csv_cell(c) for c in cells) + "\n"


def noop_tables(key: str, metadata: dict, file_names: list) -> dict:
    count = noop_count(key)
    columns = [("ImageNumber", 1), ("Count_Nuclei", count)]
    columns += [(f"FileName_{channel}", name) for channel, name in file_names]
    columns.append(("ImageSet_Key", key))
    columns += [(f"Metadata_{k}", metadata[k]) for k in sorted(metadata)]
    image = csv_line([c for c, _ in columns]) + csv_line([v for _, v in columns])
    nuclei = csv_line(["ImageNumber", "ObjectNumber", "AreaShape_Area"])
    for obj in range(1, count + 1):
        nuclei += csv_line([1, obj, 100 + 10 * obj])
    return {"Image.csv": image, "Nuclei.csv": nuclei}


def split_uri(uri: str):
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key


@app.task(name="cpflow_peer.analyse_set")
def analyse_set(experiment_id: int, bucket: str, set_id: int, key: str, metadata: dict, files: list) -> int:
    prefix = f"cpflow/{experiment_id}/sets/{key}/"
    with tempfile.TemporaryDirectory(prefix="cpflow-peer-") as work:
        inputs, names = [], []
        for f in files:
            src_bucket, src_key = split_uri(f["uri"])
            local = os.path.join(work, os.path.basename(src_key))
            body = s3().get_object(Bucket=src_bucket, Key=src_key)["Body"]
            digest, size = hashlib.sha256(), 0
            with open(local, "wb") as out:
                for chunk in body.iter_chunks(1 << 16):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            inputs.append({"channel": f["channel"], "uri": f["uri"], "size": size, "sha256": digest.hexdigest()})
            names.append((f["channel"], os.path.basename(local)))
        tables = noop_tables(key, metadata, names)
        for name, text in tables.items():
            with open(os.path.join(work, name), "w") as out:
                out.write(text)
        run_log = os.environ.get("PEER_RUN_LOG")
        if run_log:
            with open(run_log, "a") as log:
                log.write(key + "\n")
        outputs = []
        for name in sorted(tables):
            data = open(os.path.join(work, name), "rb").read()
            sha = hashlib.sha256(data).hexdigest()
            s3().put_object(Bucket=bucket, Key=prefix + name, Body=data, ContentType="text/csv", Metadata={"sha256": sha})
            outputs.append({"name": name, "uri": f"s3://{bucket}/{prefix}{name}", "size": len(data), "checksum": f"sha256:{sha}"})
        provenance = json.dumps({"experimentId": experiment_id, "imageSet": {"id": set_id, "key": key}, "inputs": inputs, "outputs": outputs}, indent=2).encode()
        psha = hashlib.sha256(provenance).hexdigest()
        s3().put_object(Bucket=bucket, Key=prefix + "provenance.json", Body=provenance, ContentType="application/json", Metadata={"sha256": psha})
        outputs.append({"name": "provenance.json", "uri": f"s3://{bucket}/{prefix}provenance.json", "size": len(provenance), "checksum": f"sha256:{psha}"})
    conn = db()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE image_set SET status = 'done', attempts = attempts + 1, output_prefix = %s, error = NULL, "
                "started_at = COALESCE(started_at, NOW(3)), finished_at = NOW(3) WHERE id = %s AND experiment_id = %s",
                (prefix, set_id, experiment_id),
            )
            cur.executemany(
                "INSERT INTO result_file (experiment_id, image_set_id, kind, uri, size, checksum) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON DUPLICATE KEY UPDATE size = VALUES(size), checksum = VALUES(checksum), kind = VALUES(kind)",
                [
                    (experiment_id, set_id, "provenance" if o["name"] == "provenance.json" else "table:" + o["name"][:-4], o["uri"], o["size"], o["checksum"])
                    for o in outputs
                ],
            )
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    return set_id


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _read_set(bucket: str, experiment_id: int, key: str):
    prefix = f"cpflow/{experiment_id}/sets/{key}/"
    image = s3().get_object(Bucket=bucket, Key=prefix + "Image.csv")["Body"].read().decode()
    nuclei = s3().get_object(Bucket=bucket, Key=prefix + "Nuclei.csv")["Body"].read().decode()
    image_row = next(csv.DictReader(io.StringIO(image)))
    areas = [float(r["AreaShape_Area"]) for r in csv.DictReader(io.StringIO(nuclei))]
    count = float(image_row["Count_Nuclei"])
    return _format(count), (_format(sum(areas) / len(areas)) if areas else "")


@app.task(name="cpflow_peer.reduce_experiment")
def reduce_experiment(_results, experiment_id: int, bucket: str) -> int:
    """The chord's callback: every set's tables into summary.csv (the columns cpflow writes for the no-op engine)."""
    conn = db()
    with conn.cursor() as cur:
        cur.execute("SELECT id, set_key, metadata, status, error FROM image_set WHERE experiment_id = %s ORDER BY id", (experiment_id,))
        rows = cur.fetchall()
    conn.commit()
    done = [r for r in rows if r[3] == "done"]
    with ThreadPoolExecutor(32) as pool:
        measured = dict(zip([r[1] for r in done], pool.map(lambda r: _read_set(bucket, experiment_id, r[1]), done)))
    out = io.StringIO()
    out.write(csv_line(["ImageSet_Key", "Status", "Error", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Count_Nuclei", "Mean_Nuclei_AreaShape_Area"]))
    for set_id, key, metadata, status, error in rows:
        meta = json.loads(metadata)
        count, mean = measured.get(key, ("", ""))
        ok = status == "done"
        out.write(csv_line([key, "done" if ok else "failed", "" if ok else (error or f"not analysed (status {status})"), meta.get("Plate", ""), meta.get("Well", ""), meta.get("Site", ""), count, mean]))
    body = out.getvalue().encode()
    s3().put_object(Bucket=bucket, Key=f"cpflow/{experiment_id}/results/summary.csv", Body=body, ContentType="text/csv")
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE experiment SET status = 'done', done_sets = %s, failed_sets = %s, summary_uri = %s, finished_at = NOW(3) WHERE id = %s",
            (len(done), len(rows) - len(done), f"s3://{bucket}/cpflow/{experiment_id}/results/summary.csv", experiment_id),
        )
    conn.commit()
    return len(rows)


def enqueue(experiment_id: int) -> None:
    """Mark the experiment started (its start time is the benchmark's t0) and send the chord."""
    conn = db()
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE experiment SET status = 'running', started_at = NOW(3), workflow_id = 'celery-peer' WHERE id = %s AND status = 'submitted'",
            (experiment_id,),
        )
        if cur.rowcount != 1:
            raise SystemExit(f"experiment {experiment_id} is not a submitted experiment")
        cur.execute("SELECT p.bucket FROM experiment e JOIN project p ON p.id = e.project_id WHERE e.id = %s", (experiment_id,))
        bucket = cur.fetchone()[0]
        cur.execute("SELECT id, set_key, metadata FROM image_set WHERE experiment_id = %s AND status = 'pending' ORDER BY id", (experiment_id,))
        sets = cur.fetchall()
        cur.execute(
            "SELECT f.image_set_id, f.channel, f.uri FROM image_file f JOIN image_set s ON s.id = f.image_set_id "
            "WHERE s.experiment_id = %s ORDER BY f.image_set_id, f.channel",
            (experiment_id,),
        )
        files = {}
        for set_id, channel, uri in cur.fetchall():
            files.setdefault(set_id, []).append({"channel": channel, "uri": uri})
    conn.commit()
    header = [analyse_set.s(experiment_id, bucket, set_id, key, json.loads(metadata), files.get(set_id, [])) for set_id, key, metadata in sets]
    chord(header)(reduce_experiment.s(experiment_id, bucket))
    print(json.dumps({"experimentId": experiment_id, "enqueued": len(header)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "enqueue":
        enqueue(int(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "purge":
        print(json.dumps({"purged": app.control.purge()}), flush=True)
    else:
        raise SystemExit(__doc__)
