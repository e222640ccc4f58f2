// Sends JSON-lines events to a Loopwise input topic with the standard Kafka Java client.
//
//   java -cp <kafka-clients and jackson-databind jars, with their dependencies>:. \
//       LoopwiseProducer BOOTSTRAP TOPIC KEY_FIELD [FILE]
//
// Each line of FILE (or stdin) is one event; it is sent unchanged as the record value, keyed by
// its top-level string field KEY_FIELD (user_id, item_id, session_id, experiment_id or
// component: see docs/producers.md). Prints "sent N" to stderr and exits 0 once every record
// is acknowledged; exits 1 on a delivery error or a line without the key, 2 on bad usage.
// deploy/local/java-producer.sh builds and runs it against the jars of the local broker.

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.serialization.StringSerializer;

public final class LoopwiseProducer {

  // Trailing content after the JSON object means the line is not one event.
  private static final ObjectMapper JSON =
      new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

  public static void main(String[] args) {
    if (args.length < 3 || args.length > 4) {
      System.err.println("usage: LoopwiseProducer BOOTSTRAP TOPIC KEY_FIELD [FILE]");
      System.exit(2);
    }
    String topic = args[1];
    String keyField = args[2];

    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    // StringSerializer writes UTF-8: the key bytes are the UTF-8 bytes of the key field.
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    // Acknowledged by every in-sync replica, and no duplicates when the client retries.
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    // No partitioner.class: the built-in partitioner puts a keyed record on
    // (murmur2(key bytes) & 0x7fffffff) % partitions, which is Loopwise's rule.
    // (partitioner.ignore.keys must stay at its default, false.)

    // The first failed delivery; callbacks run on the producer's I/O thread.
    AtomicReference<Exception> failed = new AtomicReference<>();
    long sent = 0;
    String error = null;
    try (BufferedReader in = open(args.length == 4 ? args[3] : null);
        KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
      long lineNo = 0;
      String line;
      while (failed.get() == null && (line = in.readLine()) != null) {
        lineNo++;
        if (line.isBlank()) {
          continue;
        }
        String key = keyOf(line, keyField);
        if (key == null) {
          error = "line " + lineNo + " is not a JSON object with a top-level string field \""
              + keyField + "\"";
          break;
        }
        producer.send(
            new ProducerRecord<>(topic, key, line),
            (metadata, e) -> {
              if (e != null) {
                failed.compareAndSet(null, e);
              }
            });
        sent++;
      }
      // Wait for every acknowledgement (or error) before judging the run.
      producer.flush();
    } catch (IOException e) {
      // A missing FILE, or input that is not UTF-8.
      error = "cannot read " + (args.length == 4 ? args[3] : "stdin") + ": " + e;
    } catch (KafkaException e) {
      // Bad settings, or a record refused before it was queued.
      error = "producer failed: " + e + (e.getCause() != null ? ", caused by " + e.getCause() : "");
    }

    if (failed.get() != null) {
      error = "delivery failed: " + failed.get();
    }
    if (error != null) {
      System.err.println("LoopwiseProducer: " + error + " (" + sent + " records handed over)");
      System.exit(1);
    }
    System.err.println("sent " + sent);
  }

  /** FILE, or stdin when null; bytes that are not UTF-8 fail the read instead of being replaced. */
  private static BufferedReader open(String file) throws IOException {
    if (file != null) {
      return Files.newBufferedReader(Path.of(file), StandardCharsets.UTF_8);
    }
    return new BufferedReader(
        new InputStreamReader(System.in, StandardCharsets.UTF_8.newDecoder()));
  }

  /** The top-level string field of a JSON object line, or null (not JSON, not an object, absent,
   * or not a string). A nested field of the same name does not count. */
  private static String keyOf(String line, String field) {
    try {
      JsonNode value = JSON.readTree(line).get(field);
      return value != null && value.isTextual() ? value.textValue() : null;
    } catch (JsonProcessingException e) {
      return null;
    }
  }
}
