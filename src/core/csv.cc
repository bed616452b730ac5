// RFC 4180 CSV parsing: a single pass over the text with a small state machine.
#include "core/csv.h"

#include "core/file.h"

namespace kite {

Result<std::vector<CsvRow>> parse_csv(std::string_view text, const std::string& source) {
  std::vector<CsvRow> rows;
  CsvRow row;
  std::string field;
  size_t line = 1;  // of the current position, for messages
  size_t position = 0;
  const size_t size = text.size();

  // Ends the current record; an empty line (no field started) becomes a row with no fields.
  auto end_record = [&](bool line_had_content) {
    if (line_had_content) row.push_back(std::move(field));
    rows.push_back(std::move(row));
    row = CsvRow();
    field.clear();
  };
  // Consumes a line end at `position` ("\r\n", "\n" or "\r"); returns false when there is none.
  auto consume_line_end = [&]() {
    if (position >= size) return false;
    if (text[position] == '\n') {
      ++position;
    } else if (text[position] == '\r') {
      ++position;
      if (position < size && text[position] == '\n') ++position;
    } else {
      return false;
    }
    ++line;
    return true;
  };

  while (position < size) {
    // At the start of a record.
    if (consume_line_end()) {
      end_record(/*line_had_content=*/false);
      continue;
    }
    while (true) {
      // At the start of a field.
      if (position < size && text[position] == '"') {
        const size_t opening_line = line;
        ++position;
        while (true) {
          if (position >= size) {
            return corrupt(source + ": line " + std::to_string(opening_line) +
                           ": quoted field is not closed (a '\"' is missing)");
          }
          const char c = text[position++];
          if (c == '"') {
            if (position < size && text[position] == '"') {
              field.push_back('"');
              ++position;
              continue;
            }
            break;
          }
          if (c == '\n' || (c == '\r' && !(position < size && text[position] == '\n'))) ++line;
          field.push_back(c);
        }
        if (position < size && text[position] != ',' && text[position] != '\n' &&
            text[position] != '\r') {
          return corrupt(source + ": line " + std::to_string(line) +
                         ": unexpected character after a closing quote (a quote inside a quoted "
                         "field must be doubled: \"\")");
        }
      } else {
        while (position < size && text[position] != ',' && text[position] != '\n' &&
               text[position] != '\r') {
          field.push_back(text[position++]);
        }
      }
      // After a field: a comma starts the next one; a line end or the end of the text ends the row.
      if (position < size && text[position] == ',') {
        ++position;
        row.push_back(std::move(field));
        field.clear();
        continue;
      }
      consume_line_end();
      end_record(/*line_had_content=*/true);
      break;
    }
  }
  return rows;
}

Result<std::vector<CsvRow>> read_csv_file(const std::string& path) {
  KITE_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return parse_csv(text, path);
}

}  // namespace kite
