package io.flywheel.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.LocalDateTime;
import java.util.HexFormat;

import io.flywheel.flink.FeastRedisLayout.ValueType;
import org.junit.jupiter.api.Test;

/**
 * Golden bytes from Feast 0.67's own Python serialization (helpers._redis_key, helpers._mmh3,
 * Value.SerializeToString, Timestamp.FromDatetime), generated once and pasted here; the live comparison
 * against Feast is tests/integration/test_online_sink.py.
 */
class FeastRedisLayoutTest {
    private static byte[] hex(String s) {
        return HexFormat.of().parseHex(s);
    }

    @Test
    void entityKeyOfOneJoinKey() {
        assertArrayEquals(
                hex("010000000200000007000000757365725f69640200000004000000752d3137666c79776865656c"),
                FeastRedisLayout.redisKey("flywheel", new String[] {"user_id"}, new String[] {"u-17"}));
    }

    @Test
    void entityKeyOfTwoJoinKeysIsSortedByName() {
        // Given in the job's column order (user_id, item_category); Feast sorts: item_category first.
        assertArrayEquals(
                hex("02000000020000000d0000006974656d5f63617465676f72790200000007000000757365725f6964020000000500"
                        + "00006361742d330200000004000000752d3137666c79776865656c"),
                FeastRedisLayout.redisKey(
                        "flywheel", new String[] {"user_id", "item_category"}, new String[] {"u-17", "cat-3"}));
    }

    @Test
    void featureFieldIsLittleEndianMurmur3() {
        assertArrayEquals(hex("b81a6145"), FeastRedisLayout.field("user_stats_1h", "user_impressions_1h"));
        assertArrayEquals(hex("9c19e2a3"), FeastRedisLayout.field("user_category_stats_7d", "uc_ctr_7d"));
        assertArrayEquals(hex("66c99188"), FeastRedisLayout.field("é", "x")); // UTF-8, a 3-byte tail
    }

    @Test
    void valuesOfEveryScalarType() {
        assertArrayEquals(hex("2005"), FeastRedisLayout.value(ValueType.INT64, 5L));
        assertArrayEquals(hex("2000"), FeastRedisLayout.value(ValueType.INT64, 0L)); // a oneof keeps zero
        assertArrayEquals(hex("20fdffffffffffffffff01"), FeastRedisLayout.value(ValueType.INT64, -3L));
        assertArrayEquals(hex("29000000000000d03f"), FeastRedisLayout.value(ValueType.DOUBLE, 0.25));
        assertArrayEquals(hex("290000000000000080"), FeastRedisLayout.value(ValueType.DOUBLE, -0.0));
        assertArrayEquals(hex("18ffffffffffffffffff01"), FeastRedisLayout.value(ValueType.INT32, -1));
        assertArrayEquals(hex("350000c03f"), FeastRedisLayout.value(ValueType.FLOAT, 1.5f));
        assertArrayEquals(hex("3801"), FeastRedisLayout.value(ValueType.BOOL, true));
        assertArrayEquals(hex("3800"), FeastRedisLayout.value(ValueType.BOOL, false));
        assertArrayEquals(hex("1202c3a9"), FeastRedisLayout.value(ValueType.STRING, "é"));
        assertArrayEquals(hex("0a020102"), FeastRedisLayout.value(ValueType.BYTES, new byte[] {1, 2}));
        assertArrayEquals(
                hex("4080f2d6ca06"),
                FeastRedisLayout.value(ValueType.UNIX_TIMESTAMP, LocalDateTime.of(2026, 1, 1, 0, 0, 0, 999_000_000)));
    }

    @Test
    void nullAndNonFiniteAreFeastsEmptyValue() {
        // Feast's python_values_to_proto_values turns None and NaN into an empty Value too.
        assertArrayEquals(new byte[0], FeastRedisLayout.value(ValueType.DOUBLE, null));
        assertArrayEquals(new byte[0], FeastRedisLayout.value(ValueType.DOUBLE, Double.NaN));
        assertArrayEquals(new byte[0], FeastRedisLayout.value(ValueType.DOUBLE, Double.POSITIVE_INFINITY));
        assertArrayEquals(new byte[0], FeastRedisLayout.value(ValueType.INT64, null));
    }

    @Test
    void eventTimestampKeepsMilliseconds() {
        LocalDateTime windowEnd = LocalDateTime.of(2026, 1, 5, 12, 5, 0, 1_000_000);
        assertArrayEquals(hex("08ecd1eeca0610c0843d"), FeastRedisLayout.timestamp(windowEnd));
        assertArrayEquals(new byte[0], FeastRedisLayout.timestamp(0, 0));
    }

    @Test
    void aConfigurationWithAnotherSerializationVersionIsRefused() {
        String json = "{\"entity_key_serialization_version\": 2}";
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new FeastRedisSink(json));
        assertTrue(e.getMessage().contains("set 3 in feature_store.yaml"), e.getMessage());
    }

    @Test
    void theWriteScriptIsInTheJar() {
        assertTrue(FeastRedisWriter.SCRIPT.contains("redis.call('HSET'"));
    }
}
