package io.flywheel.flink;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.metrics.Counter;
import org.apache.flink.types.Row;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import redis.clients.jedis.AbstractPipeline;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.JedisClientConfig;
import redis.clients.jedis.RedisClient;
import redis.clients.jedis.RedisClusterClient;
import redis.clients.jedis.Response;
import redis.clients.jedis.UnifiedJedis;
import redis.clients.jedis.exceptions.JedisClusterOperationException;
import redis.clients.jedis.exceptions.JedisConnectionException;
import redis.clients.jedis.exceptions.JedisDataException;

/**
 * FeastRedisSink's writer: keeps each entity's latest value and writes them in pipelined batches of
 * newer-only upserts (feast_redis_write.lua, by EVALSHA, {@code keysPerCall} entities a call: the call's
 * own cost is most of a one-entity call's).
 *
 * <p>Only a key's latest value is worth a write (Redis keeps nothing else), so values wait here, one per
 * key, until one of:
 *
 * <ul>
 *   <li>a watermark while live (the watermark within {@code liveLagMs} of the wall clock): a value is in
 *       Redis one watermark step after its window fires;
 *   <li>{@code flushIntervalMs} after the first value waiting (catching up or replaying, when watermarks
 *       race ahead: the wait lets a key's successive values collapse into one write);
 *   <li>{@code maxPending} keys waiting (memory bound);
 *   <li>a checkpoint barrier or the end of the input ({@link #flush}): nothing is held across a
 *       checkpoint, so the writer has no state and a completed checkpoint covers every value.
 * </ul>
 *
 * <p>Connection errors are retried with exponential backoff for up to {@code retryTimeoutMs}; then the
 * writer throws, the job fails and restarts from its last checkpoint: values are never dropped.
 */
class FeastRedisWriter implements SinkWriter<Row> {
    private static final Logger LOG = LoggerFactory.getLogger(FeastRedisWriter.class);
    static final String SCRIPT = loadScript();

    private final FeastRedisSink.Config config;
    private final ProcessingTimeService time;
    private final boolean copyRows;
    private final byte[] tsField;
    private final byte[][] fields;
    private final byte[] ttl;
    private final Map<String, Row> pending = new HashMap<>();
    private final Counter written;
    private final Counter notNewer;
    private UnifiedJedis client;
    private byte[] sha;
    private boolean timerSet;

    FeastRedisWriter(FeastRedisSink.Config config, WriterInitContext context) {
        this.config = config;
        this.time = context.getProcessingTimeService();
        this.copyRows = context.isObjectReuseEnabled();
        this.written = context.metricGroup().counter("feastValuesWritten");
        this.notNewer = context.metricGroup().counter("feastValuesNotNewer");
        context.metricGroup().gauge("feastPendingKeys", pending::size);
        this.tsField = FeastRedisLayout.timestampField(config.view);
        this.fields = new byte[config.features.length][];
        for (int i = 0; i < fields.length; i++) {
            fields[i] = FeastRedisLayout.field(config.view, config.features[i]);
        }
        this.ttl = ascii(config.keyTtlSeconds);
        this.client = connect(config);
        LOG.info("{}: writing to Redis", config);
    }

    private static UnifiedJedis connect(FeastRedisSink.Config c) {
        DefaultJedisClientConfig.Builder b = DefaultJedisClientConfig.builder()
                .ssl(c.ssl)
                .database(c.database)
                .connectionTimeoutMillis(5_000)
                .socketTimeoutMillis(30_000);
        if (c.password != null) {
            b.password(c.password);
        }
        if (c.username != null) {
            b.user(c.username);
        }
        JedisClientConfig jc = b.build();
        if (c.cluster) {
            Set<HostAndPort> nodes = new HashSet<>();
            for (String[] n : c.nodes) {
                nodes.add(new HostAndPort(n[0], Integer.parseInt(n[1])));
            }
            return RedisClusterClient.builder().nodes(nodes).clientConfig(jc).build();
        }
        String[] n = c.nodes.get(0);
        return RedisClient.builder().hostAndPort(n[0], Integer.parseInt(n[1])).clientConfig(jc).build();
    }

    @Override
    public void write(Row row, Context context) throws IOException, InterruptedException {
        Row r = copyRows ? Row.copy(row) : row; // with object reuse the caller recycles `row`
        String key = RowKey.join(r, config.joinKeys.length);
        Row seen = pending.get(key);
        if (seen == null || !eventTime(r).isBefore(eventTime(seen))) {
            pending.put(key, r);
        }
        if (pending.size() >= config.maxPending) {
            writePending();
        } else if (!timerSet) {
            timerSet = true;
            time.registerTimer(time.getCurrentProcessingTime() + config.flushIntervalMs, t -> {
                timerSet = false;
                writePending();
            });
        }
    }

    @Override
    public void writeWatermark(Watermark watermark) throws IOException, InterruptedException {
        if (watermark.getTimestamp() >= System.currentTimeMillis() - config.liveLagMs) {
            writePending();
        }
    }

    @Override
    public void flush(boolean endOfInput) throws IOException, InterruptedException {
        writePending();
    }

    private LocalDateTime eventTime(Row row) {
        return (LocalDateTime) row.getField(row.getArity() - 1);
    }

    void writePending() throws IOException, InterruptedException {
        if (pending.isEmpty()) {
            return;
        }
        List<Row> rows = new ArrayList<>(pending.values());
        pending.clear();
        for (int start = 0; start < rows.size(); start += config.batchSize) {
            writeWithRetries(rows.subList(start, Math.min(start + config.batchSize, rows.size())));
        }
    }

    private void writeWithRetries(List<Row> rows) throws IOException, InterruptedException {
        long deadline = System.currentTimeMillis() + config.retryTimeoutMs;
        long backoffMs = 100;
        for (int attempt = 1; ; attempt++) {
            try {
                writeBatch(rows);
                if (attempt > 1) {
                    LOG.info("{}: Redis reachable again after {} attempts", config, attempt);
                }
                return;
            } catch (JedisConnectionException | JedisClusterOperationException e) {
                if (System.currentTimeMillis() + backoffMs > deadline) {
                    throw new IOException(config + ": Redis unreachable for " + config.retryTimeoutMs / 1000
                            + " s; failing so that the job restarts from its last checkpoint", e);
                }
                LOG.warn("{}: Redis write failed (attempt {}), retrying in {} ms: {}", config, attempt, backoffMs,
                        e.toString());
                Thread.sleep(backoffMs);
                backoffMs = Math.min(backoffMs * 2, 5_000);
            }
        }
    }

    /** One pipelined round trip: an EVALSHA per {@code keysPerCall} entities. */
    private void writeBatch(List<Row> rows) {
        if (sha == null) {
            sha = client.scriptLoad(SCRIPT).getBytes(StandardCharsets.US_ASCII);
        }
        List<List<byte[]>> keys = new ArrayList<>();
        List<List<byte[]>> argv = new ArrayList<>();
        for (int start = 0; start < rows.size(); start += config.keysPerCall) {
            List<Row> call = rows.subList(start, Math.min(start + config.keysPerCall, rows.size()));
            List<byte[]> k = new ArrayList<>(call.size());
            for (Row row : call) {
                k.add(redisKey(row));
            }
            keys.add(k);
            argv.add(args(call));
        }
        List<Response<Object>> replies = new ArrayList<>(keys.size());
        try (AbstractPipeline pipe = client.pipelined()) {
            for (int i = 0; i < keys.size(); i++) {
                replies.add(pipe.evalsha(sha, keys.get(i), argv.get(i)));
            }
            pipe.sync();
        }
        for (int i = 0; i < replies.size(); i++) {
            Object reply;
            try {
                reply = replies.get(i).get();
            } catch (JedisDataException e) {
                if (e.getMessage() == null || !e.getMessage().startsWith("NOSCRIPT")) {
                    throw e;
                }
                // A restarted Redis, or a cluster node that has not seen the script yet: EVAL loads it.
                reply = client.eval(SCRIPT.getBytes(StandardCharsets.UTF_8), keys.get(i), argv.get(i));
            }
            long n = (Long) reply;
            written.inc(n);
            notNewer.inc(keys.get(i).size() - n);
        }
    }

    byte[] redisKey(Row row) {
        String[] values = new String[config.joinKeys.length];
        for (int i = 0; i < values.length; i++) {
            values[i] = (String) row.getField(i);
        }
        return FeastRedisLayout.redisKey(config.project, config.joinKeys, values);
    }

    /** The script's ARGV for the entities of one call (see feast_redis_write.lua). */
    List<byte[]> args(List<Row> rows) {
        List<byte[]> a = new ArrayList<>(3 + fields.length + rows.size() * (3 + fields.length));
        a.add(tsField);
        a.add(ttl);
        a.add(ascii(fields.length));
        a.addAll(Arrays.asList(fields));
        int offset = config.joinKeys.length;
        for (Row row : rows) {
            LocalDateTime ts = eventTime(row);
            long seconds = ts.toEpochSecond(ZoneOffset.UTC);
            a.add(FeastRedisLayout.timestamp(seconds, ts.getNano()));
            a.add(ascii(seconds));
            a.add(ascii(ts.getNano()));
            for (int i = 0; i < fields.length; i++) {
                a.add(FeastRedisLayout.value(config.types[i], row.getField(offset + i)));
            }
        }
        return a;
    }

    private static byte[] ascii(long v) {
        return Long.toString(v).getBytes(StandardCharsets.US_ASCII);
    }

    private static String loadScript() {
        try (InputStream in = FeastRedisWriter.class.getResourceAsStream("feast_redis_write.lua")) {
            if (in == null) {
                throw new IllegalStateException("feast_redis_write.lua is not in the jar: rebuild with `make setup`");
            }
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    @Override
    public void close() {
        if (client != null) {
            client.close();
            client = null;
        }
    }
}
