package io.flywheel.flink;

import java.io.IOException;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;

/**
 * A Flink sink (Sink V2) that writes one Feast feature view into Feast's Redis online store, in exactly the
 * layout Feast 0.67 reads (FeastRedisLayout), so the Feast SDK and Feast's feature servers serve what it
 * writes. No Feast, no Python: everything about the view arrives as configuration, read from the Feast
 * registry by the job builder (flink_jobs/online_sink.py).
 *
 * <p>Input rows: the view's join keys (strings, in the configured order), its features (in the configured
 * order and types), then the event timestamp (a UTC LocalDateTime), Feast's {@code _ts:<view>}.
 *
 * <p>Exactly-once online state from at-least-once delivery plus idempotent, newer-only upserts: the writer
 * flushes everything it holds before each checkpoint barrier passes, and a write lands only if it is newer
 * than the stored one (atomically, in Redis). After a restore the job rewrites values with the timestamps
 * already stored: no-ops. See FeastRedisWriter for batching and retries.
 */
public class FeastRedisSink implements Sink<Row> {
    private static final long serialVersionUID = 1L;

    private final Config config;

    /** @param json the configuration, as flink_jobs/online_sink.py writes it (see {@link Config}) */
    public FeastRedisSink(String json) {
        this.config = Config.parse(json);
    }

    @Override
    public SinkWriter<Row> createWriter(WriterInitContext context) throws IOException {
        return new FeastRedisWriter(config, context);
    }

    /** What the sink needs to know, all of it from Feast's registry and feature_store.yaml, or settings. */
    public static final class Config implements Serializable {
        private static final long serialVersionUID = 1L;

        final String project;
        final String view;
        final String[] joinKeys;
        final String[] features;
        final FeastRedisLayout.ValueType[] types;
        final long keyTtlSeconds; // 0: keys do not expire
        final List<String[]> nodes; // host, port
        final boolean cluster;
        final boolean ssl;
        final int database;
        final String username;
        final String password; // never logged; see toString
        final int batchSize; // values per pipelined round trip
        final int keysPerCall; // entities per script call (1 on Redis Cluster: a call's keys share a slot)
        final int maxPending; // distinct keys held before they are written regardless of time
        final long liveLagMs;
        final long flushIntervalMs;
        final long retryTimeoutMs;

        private Config(JsonNode j) {
            int version = j.path("entity_key_serialization_version").asInt(0);
            if (version != 3) {
                throw new IllegalArgumentException(
                        "entity_key_serialization_version " + version + " is not supported: set 3 in feature_store.yaml");
            }
            project = j.get("project").asText();
            JsonNode v = j.get("view");
            view = v.get("name").asText();
            joinKeys = strings(v.get("join_keys"));
            JsonNode fs = v.get("features");
            features = new String[fs.size()];
            types = new FeastRedisLayout.ValueType[fs.size()];
            for (int i = 0; i < fs.size(); i++) {
                features[i] = fs.get(i).get("name").asText();
                types[i] = FeastRedisLayout.ValueType.valueOf(fs.get(i).get("type").asText());
            }
            keyTtlSeconds = j.path("key_ttl_seconds").asLong(0);
            JsonNode r = j.get("redis");
            nodes = new ArrayList<>();
            for (JsonNode n : r.get("nodes")) {
                nodes.add(new String[] {n.get(0).asText(), n.get(1).asText()});
            }
            cluster = r.path("cluster").asBoolean(false);
            ssl = r.path("ssl").asBoolean(false);
            database = r.path("db").asInt(0);
            username = r.hasNonNull("username") ? r.get("username").asText() : null;
            password = r.hasNonNull("password") ? r.get("password").asText() : null;
            batchSize = j.get("batch_size").asInt();
            keysPerCall = cluster ? 1 : Math.max(1, j.path("keys_per_call").asInt(1));
            maxPending = j.get("max_pending").asInt();
            liveLagMs = j.get("live_lag_ms").asLong();
            flushIntervalMs = j.get("flush_interval_ms").asLong();
            retryTimeoutMs = j.get("retry_timeout_ms").asLong();
        }

        static Config parse(String json) {
            try {
                return new Config(new ObjectMapper().readTree(json));
            } catch (IOException | NullPointerException e) {
                throw new IllegalArgumentException("FeastRedisSink: malformed configuration: " + e, e);
            }
        }

        private static String[] strings(JsonNode array) {
            String[] out = new String[array.size()];
            for (int i = 0; i < out.length; i++) {
                out[i] = array.get(i).asText();
            }
            return out;
        }

        @Override
        public String toString() {
            return "FeastRedisSink[" + project + "/" + view + " -> " + nodes.size() + " node(s)"
                    + (cluster ? ", cluster" : "") + (ssl ? ", TLS" : "") + "]";
        }
    }
}
