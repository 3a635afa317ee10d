package io.flywheel.flink;

import java.io.IOException;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.types.Row;

/**
 * JSON_FIELDS(payload): one row whose column `j` holds the top-level fields of a JSON object, parsed
 * once, as MAP&lt;STRING, STRING&gt;. Use it as {@code FROM t, LATERAL TABLE(JSON_FIELDS(payload)) AS p(j)}.
 *
 * <p>Why: Flink's JSON_VALUE and JSON_EXISTS parse the whole document on every call, and the event
 * contract (flink_jobs/contract_sql.py) needs about forty of them per record; that parsing was most of
 * the feature job's CPU. It is a table function, not a scalar one, because the planner inlines a scalar
 * call into each of its ~70 uses (parsing the record each time); a lateral table is evaluated once.
 *
 * <p>The values read like JSON_VALUE's: a scalar as its text, JSON null and nested objects or arrays as
 * NULL (the key is still present). Not a JSON object (or not JSON at all): j is NULL. Always one row.
 */
@FunctionHint(output = @DataTypeHint("ROW<j MAP<STRING, STRING>>"))
public class JsonFields extends TableFunction<Row> {
    private static final JsonFactory FACTORY = new JsonFactory();

    public void eval(String json) {
        collect(Row.of(parse(json)));
    }

    static Map<String, String> parse(String json) {
        if (json == null) {
            return null;
        }
        try (JsonParser p = FACTORY.createParser(json)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            Map<String, String> fields = new HashMap<>();
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken v = p.nextToken();
                if (v == JsonToken.START_OBJECT || v == JsonToken.START_ARRAY) {
                    p.skipChildren();
                    fields.put(name, null);
                } else if (v == JsonToken.VALUE_NULL) {
                    fields.put(name, null);
                } else {
                    fields.put(name, p.getText());
                }
            }
            if (t != JsonToken.END_OBJECT || p.nextToken() != null) {
                return null; // truncated, or trailing content after the object
            }
            return fields;
        } catch (IOException e) {
            return null;
        }
    }
}
