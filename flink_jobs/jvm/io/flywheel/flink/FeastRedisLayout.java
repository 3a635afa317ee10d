package io.flywheel.flink;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.Arrays;
import java.util.Comparator;

/**
 * The bytes Feast 0.67's Redis online store reads, written without Feast: the entity key (serialization
 * version 3) followed by the project, the hash field of a feature, a {@code feast.types.Value} and the
 * {@code google.protobuf.Timestamp} under {@code _ts:<view>}.
 *
 * <p>Mirrors {@code feast/infra/key_encoding_utils.py} ({@code serialize_entity_key}) and
 * {@code feast/infra/online_stores/helpers.py} ({@code _redis_key}, {@code _mmh3}); the two protobuf
 * messages are encoded by hand (a handful of wire-format rules) rather than with protobuf-java, whose
 * version would have to agree with the cluster's. tests/jvm FeastRedisLayoutTest holds golden bytes from
 * Feast's own Python serialization, and tests/integration/test_online_sink.py compares against Feast live.
 */
public final class FeastRedisLayout {
    /** feast.types.ValueType numbers, as written into the entity key. */
    static final int STRING_TYPE = 2;

    private FeastRedisLayout() {}

    /** Feast's value types this writer encodes (the scalar ones), by their ValueType name. */
    public enum ValueType {
        BYTES(1), STRING(2), INT32(3), INT64(4), DOUBLE(5), FLOAT(6), BOOL(7), UNIX_TIMESTAMP(8);

        /** The field number of this type in {@code feast.types.Value}'s oneof. */
        final int field;

        ValueType(int field) {
            this.field = field;
        }
    }

    /**
     * The Redis key of an entity: Feast's entity-key serialization (version 3: the number of keys, then
     * each join key as type, length, UTF-8; then each value as type, length, bytes; keys sorted by name,
     * values following their keys), then the project name.
     */
    public static byte[] redisKey(String project, String[] joinKeys, String[] values) {
        Integer[] order = new Integer[joinKeys.length];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
        }
        Arrays.sort(order, Comparator.comparing(i -> joinKeys[i])); // Python's sorted() on str: code points
        ByteArrayOutputStream out = new ByteArrayOutputStream(64);
        writeIntLE(out, joinKeys.length);
        for (int i : order) {
            byte[] name = joinKeys[i].getBytes(StandardCharsets.UTF_8);
            writeIntLE(out, STRING_TYPE);
            writeIntLE(out, name.length);
            out.writeBytes(name);
        }
        for (int i : order) {
            byte[] value = values[i].getBytes(StandardCharsets.UTF_8);
            writeIntLE(out, STRING_TYPE);
            writeIntLE(out, value.length);
            out.writeBytes(value);
        }
        out.writeBytes(project.getBytes(StandardCharsets.UTF_8));
        return out.toByteArray();
    }

    /** The hash field of a feature: MurmurHash3 (x86, 32-bit, seed 0) of "view:feature", little-endian. */
    public static byte[] field(String view, String feature) {
        int h = murmur3(( view + ":" + feature).getBytes(StandardCharsets.UTF_8));
        return ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(h).array();
    }

    /** The hash field of a view's event timestamp. */
    public static byte[] timestampField(String view) {
        return ("_ts:" + view).getBytes(StandardCharsets.UTF_8);
    }

    /** A serialized google.protobuf.Timestamp (zero fields are omitted, as proto3 does). */
    public static byte[] timestamp(long seconds, int nanos) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(16);
        if (seconds != 0) {
            out.write(1 << 3); // field 1, varint
            writeVarint(out, seconds);
        }
        if (nanos != 0) {
            out.write(2 << 3); // field 2, varint
            writeVarint(out, nanos);
        }
        return out.toByteArray();
    }

    /** The Timestamp of a UTC LocalDateTime (how Flink hands TIMESTAMP(3) columns over). */
    public static byte[] timestamp(LocalDateTime utc) {
        return timestamp(utc.toEpochSecond(ZoneOffset.UTC), utc.getNano());
    }

    /**
     * A serialized feast.types.Value holding {@code v} as {@code type}; null (and a non-finite double,
     * which the offline store keeps as null too) is the empty Value, Feast's null. A timestamp value is
     * a LocalDateTime (UTC), stored in whole seconds as Feast does.
     */
    public static byte[] value(ValueType type, Object v) {
        if (v == null) {
            return new byte[0];
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(16);
        switch (type) {
            case INT64:
                tag(out, type, 0);
                writeVarint(out, ((Number) v).longValue());
                break;
            case INT32:
                tag(out, type, 0);
                writeVarint(out, ((Number) v).intValue()); // sign-extended to 64 bits, as protobuf does
                break;
            case BOOL:
                tag(out, type, 0);
                out.write((Boolean) v ? 1 : 0);
                break;
            case UNIX_TIMESTAMP:
                tag(out, type, 0);
                writeVarint(out, ((LocalDateTime) v).toEpochSecond(ZoneOffset.UTC));
                break;
            case DOUBLE: {
                double d = ((Number) v).doubleValue();
                if (!Double.isFinite(d)) {
                    return new byte[0];
                }
                tag(out, type, 1);
                out.writeBytes(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putDouble(d).array());
                break;
            }
            case FLOAT: {
                float f = ((Number) v).floatValue();
                if (!Float.isFinite(f)) {
                    return new byte[0];
                }
                tag(out, type, 5);
                out.writeBytes(ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putFloat(f).array());
                break;
            }
            case STRING:
            case BYTES: {
                byte[] b = v instanceof byte[] ? (byte[]) v : v.toString().getBytes(StandardCharsets.UTF_8);
                tag(out, type, 2);
                writeVarint(out, b.length);
                out.writeBytes(b);
                break;
            }
            default:
                throw new IllegalArgumentException("unsupported Feast value type " + type);
        }
        return out.toByteArray();
    }

    private static void tag(ByteArrayOutputStream out, ValueType type, int wireType) {
        writeVarint(out, (type.field << 3) | wireType);
    }

    static void writeVarint(ByteArrayOutputStream out, long v) {
        while ((v & ~0x7FL) != 0) {
            out.write((int) ((v & 0x7F) | 0x80));
            v >>>= 7;
        }
        out.write((int) v);
    }

    private static void writeIntLE(ByteArrayOutputStream out, int v) {
        out.write(v);
        out.write(v >>> 8);
        out.write(v >>> 16);
        out.write(v >>> 24);
    }

    /** MurmurHash3_x86_32 with seed 0 (what Python's mmh3.hash computes). */
    static int murmur3(byte[] data) {
        final int c1 = 0xcc9e2d51;
        final int c2 = 0x1b873593;
        int h = 0;
        int blocks = data.length / 4;
        ByteBuffer buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < blocks; i++) {
            int k = buf.getInt(i * 4);
            k *= c1;
            k = Integer.rotateLeft(k, 15);
            k *= c2;
            h ^= k;
            h = Integer.rotateLeft(h, 13);
            h = h * 5 + 0xe6546b64;
        }
        int k = 0;
        int tail = blocks * 4;
        switch (data.length & 3) {
            case 3:
                k ^= (data[tail + 2] & 0xff) << 16;
            // fall through
            case 2:
                k ^= (data[tail + 1] & 0xff) << 8;
            // fall through
            case 1:
                k ^= data[tail] & 0xff;
                k *= c1;
                k = Integer.rotateLeft(k, 15);
                k *= c2;
                h ^= k;
            // fall through
            default:
        }
        h ^= data.length;
        h ^= h >>> 16;
        h *= 0x85ebca6b;
        h ^= h >>> 13;
        h *= 0xc2b2ae35;
        h ^= h >>> 16;
        return h;
    }
}
