import { Readable } from 'node:stream';
import { imageLimitsConfig } from '../core/config';
import { imageLimitProblem, sizeProblem } from '../core/image-limits';
import { adaptiveBatching, type DispatchOptions } from '../core/model';
import { CHANNEL_MAX, SET_KEY_MAX } from '../core/naming';
import { firstFew } from './local-files';
import { SubmitError } from './submit-error';
import type { Source, SourceSet } from './submit-sources';
import type { PlannedStage } from './submit-stages';

/** What `cpflow submit` refuses or warns about before anything is written: column sizes, image limits, unattributable saves. */

/** Set keys and channel names must fit their columns ("Data too long" is no message for a person). */
export function checkColumnLimits(sets: SourceSet[]): void {
  const longKey = sets.find((s) => [...s.key].length > SET_KEY_MAX);
  if (longKey) throw new SubmitError(`image set key ${longKey.key.slice(0, 40)}… is ${[...longKey.key].length} characters; at most ${SET_KEY_MAX} are allowed`);
  for (const s of sets) {
    const longChannel = s.files.find((f) => [...f.channel].length > CHANNEL_MAX);
    if (longChannel) throw new SubmitError(`channel name ${longChannel.channel.slice(0, 40)}… (${longChannel.source.name}) is longer than ${CHANNEL_MAX} characters`);
  }
}

/**
 * The per-image limits: file size for every file, declared pixels from the headers of local files
 * (S3 objects are checked by the worker before it decodes them). Over-limit images refuse the submit.
 */
export async function checkImageLimits(files: Source[], concurrency: number): Promise<void> {
  const limits = imageLimitsConfig();
  const problems = (
    await Readable.from(files)
      .map(async (f: Source) => {
        const problem = f.local ? await imageLimitProblem(f.local, limits) : sizeProblem(f.size, limits);
        return problem ? `${f.name} ${problem}` : undefined;
      }, { concurrency })
      .toArray()
  ).filter((p): p is string => p !== undefined);
  if (problems.length > 0) {
    throw new SubmitError(`${problems.length} ${problems.length === 1 ? 'image exceeds' : 'images exceed'} the per-image limits: ${firstFew(problems, 3)}`);
  }
}

/** The warning for batches whose SaveImages files cannot be told apart (they rerun set by set). */
export function unrecordedSaveWarnings(stages: PlannedStage[], dispatch: Pick<DispatchOptions, 'batchSize' | 'batchSizeExplicit'>): string[] {
  const warnings: string[] = [];
  const batches = adaptiveBatching(dispatch) || dispatch.batchSize > 1;
  for (const stage of stages) {
    const unrecorded = stage.info?.unrecordedSaves ?? [];
    if (batches && stage.groupBy.length === 0 && unrecorded.length > 0) {
      // Said now: such batches cost one wasted invocation before their sets run one by one.
      warnings.push(
        `${stage.label}: SaveImages (module ${unrecorded.join(', ')}) does not record its files in the Image table, so in a batch cpflow cannot tell ` +
          `which set wrote which file: batches whose sets save such files run again set by set (set "Record the file and path information to the saved image?" to Yes, or --batch-size 1)`,
      );
    }
  }
  return warnings;
}
